"""The homeedge edge gateway: MQTT in, validate, store, infer, aggregate, anonymize, uplink."""
