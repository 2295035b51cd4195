"""The shared logic: pure functions every process runs the same way, so online and offline agree.

Feature updates (`features`), the stream's per-key state machines (`streaming`), point-in-time
training samples (`samples`), model inputs (`model_inputs`), co-visitation counts (`covisitation`),
the retrieval index (`ann`) and the served pipeline (`pipeline`). Nothing here reads Redis, Kafka
or a file except through the contract modules one level up.
"""
