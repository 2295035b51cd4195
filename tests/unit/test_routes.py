import ast
import inspect
import textwrap

from serving import handlers
from serving.parameters import Parameters
from serving.routes import ROUTES


def parsed_models(handler) -> set[type[Parameters]]:
    """The parameter models a handler's own code parses requests with."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(handler)))
    names = {
        node.value.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "parse" and isinstance(node.value, ast.Name)
    }
    models = {getattr(handlers, name, None) for name in names}
    return {model for model in models if isinstance(model, type) and issubclass(model, Parameters)}


def test_every_route_documents_exactly_the_parameter_models_its_handler_parses():
    for route in ROUTES:
        assert set(route.parameters) == parsed_models(route.handler), route.path


def test_the_check_sees_the_parameter_models_of_the_recommendations_handler():
    assert {model.__name__ for model in parsed_models(handlers.recommendations)} == {"RecommendationsQuery"}
