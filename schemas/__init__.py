"""The contract every Kingfisher process shares: configuration, event and catalogue schemas,
Redis key and value formats, feature definitions and the model-bundle manifest."""
