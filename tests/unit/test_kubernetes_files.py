"""infra/kubernetes cannot be applied here (no cluster): these check that its files agree with the code."""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from schemas.config import SETTING_PATHS, Settings
from schemas.sample_log import log_directory
from serving.routes import ROUTES
from serving.workers import metrics_directory
from streams.flink_env import checkpoint_uri, rocksdb_directory

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "infra" / "kubernetes"


def documents(name: str) -> list[dict]:
    return [document for document in yaml.safe_load_all((KUBERNETES / name).read_text()) if document]


def resources() -> list[dict]:
    return [document for name in documents("kustomization.yaml")[0]["resources"] for document in documents(name)]


def kind(name: str) -> dict:
    (found,) = [resource for resource in resources() if resource["kind"] == name]
    return found


def pod_specs() -> list[dict]:
    specs = [r["spec"]["template"]["spec"] for r in resources() if r["kind"] == "Deployment"]
    return [*specs, kind("FlinkDeployment")["spec"]["podTemplate"]["spec"]]


def containers() -> list[dict]:
    return [container for spec in pod_specs() for container in spec["containers"]]


def settings_of(container: dict) -> dict[str, str]:
    """The KF_* variables a container gets: the ConfigMaps it names, then its own env."""
    maps = {r["metadata"]["name"]: r["data"] for r in resources() if r["kind"] == "ConfigMap"}
    variables = {}
    for source in container.get("envFrom", []):
        variables |= maps[source["configMapRef"]["name"]]
    return variables | {entry["name"]: entry["value"] for entry in container.get("env", [])}


def settings_for(container: dict) -> Settings:
    """The settings the container's program reads."""
    return Settings(**{name[3:].lower(): value for name, value in settings_of(container).items()})


def pinned_flink_version() -> str:
    return re.search(r"^apache-flink==(\S+)", (ROOT / "requirements.lock").read_text(), re.MULTILINE)[1]


def test_kustomize_lists_every_file_and_every_file_parses():
    kustomization = documents("kustomization.yaml")[0]
    listed = set(kustomization["resources"]) | set(kustomization["configurations"])
    assert listed == {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert all(resource["metadata"]["name"] for resource in resources())


@pytest.mark.parametrize("container", containers(), ids=lambda container: container["name"])
def test_every_variable_a_pod_gets_is_a_setting_with_a_valid_value(container, monkeypatch):
    variables = settings_of(container)
    assert {name for name in variables if not name.startswith("KF_")} == set()
    assert {name for name in variables if name[3:].lower() not in SETTING_PATHS} == set()
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    Settings()  # raises on a value the settings refuse


@pytest.mark.parametrize("container", containers(), ids=lambda container: container["name"])
def test_every_command_runs_a_module_of_the_project(container):
    command = container.get("command", []) + container.get("args", [])
    modules = [command[i + 1] for i, word in enumerate(command) if word == "-m"]
    assert all(importlib.util.find_spec(module) is not None for module in modules)


def test_the_flink_job_is_the_feature_job_with_the_settings_flink_is_given():
    spec = kind("FlinkDeployment")["spec"]
    (main,) = spec["podTemplate"]["spec"]["containers"]
    settings = settings_for(main)
    flink = spec["flinkConfiguration"]
    version = pinned_flink_version()

    assert spec["job"]["args"][-2:] == ["-pym", "streams.feature_job"]
    assert importlib.util.find_spec("streams.feature_job") is not None
    assert spec["job"]["jarURI"] == f"local:///opt/flink/opt/flink-python-{version}.jar"
    assert spec["flinkVersion"] == "v" + "_".join(version.split(".")[:2])
    assert spec["job"]["parallelism"] == settings.stream.flink_parallelism
    assert flink["state.backend.type"] == settings.stream.state_backend
    assert flink["execution.checkpointing.incremental"] == str(settings.stream.checkpoint_incremental).lower()
    assert flink["execution.checkpointing.dir"] == checkpoint_uri(settings, settings.stack.namespace)
    assert flink["python.execution-mode"] == settings.stream.python_execution_mode
    assert (ROOT / "streams").is_dir() and f"flink-s3-fs-presto:{version}" in (KUBERNETES / "Dockerfile").read_text()


def test_the_service_listens_where_its_port_and_probes_point():
    deployment = next(r for r in resources() if r["kind"] == "Deployment" and r["metadata"]["name"].endswith("service"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = settings_for(container)
    paths = {route.path for route in ROUTES if route.method == "GET"}

    assert container["ports"][0]["containerPort"] == settings.serving.serve_port
    assert settings.stack.bind_host == "0.0.0.0"  # a pod is reached on its own address
    assert container["readinessProbe"]["httpGet"]["path"] in paths
    assert container["livenessProbe"]["httpGet"]["path"] in paths
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] in paths | {"/metrics"}


def test_every_file_the_image_copies_exists():
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", (KUBERNETES / "Dockerfile").read_text(), re.MULTILINE)
    paths = [path for line in sources for path in line.split()]
    assert paths and [path for path in paths if not (ROOT / path).exists()] == []


def pod_spec_of(container_name: str) -> dict:
    (spec,) = [spec for spec in pod_specs() if container_name in {c["name"] for c in spec["containers"]}]
    return spec


def written_directories(container: dict, settings: Settings) -> dict[str, list[Path]]:
    """What the container's program writes, by where it must live: 'shared' (other pods read it) or
    'own' (this pod's processes only), as the code names the directories."""
    module = " ".join(container.get("command", []) + container.get("args", []))
    if "-m serving" in module:  # the registry: the experiment, and CURRENT on a promotion
        return {
            "own": [metrics_directory(settings, settings.serving.serve_port)],
            "shared": [settings.stack.models_dir],
        }
    if "-m training.scheduler" in module:
        return {"shared": [settings.stack.models_dir]}
    configured = kind("FlinkDeployment")["spec"]["flinkConfiguration"]["state.backend.rocksdb.localdir"]
    return {
        "shared": [log_directory(settings.stack.samples_dir, settings.stack.namespace)],
        "own": [rocksdb_directory(settings), Path(configured)],
    }


def mount_of(path: Path, container: dict) -> dict:
    (mount,) = [m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    return mount


@pytest.mark.parametrize("container", containers(), ids=lambda container: container["name"])
def test_each_pod_writes_shared_files_to_the_shared_volume_and_its_own_to_its_own_disk(container):
    settings = settings_for(container)
    volumes = {volume["name"]: volume for volume in pod_spec_of(container["name"])["volumes"]}
    for where, paths in written_directories(container, settings).items():
        for path in paths:
            mount = mount_of(path, container)
            assert not mount.get("readOnly", False), f"{path} is on a read-only mount"
            volume = volumes[mount["name"]]
            assert ("emptyDir" in volume) == (where == "own"), f"{path} ({where}) is on {volume}"
