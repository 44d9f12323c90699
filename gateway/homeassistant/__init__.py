"""Home Assistant MQTT discovery for the gateway: one HA device per homeedge device and one for
the gateway itself, sensor and binary_sensor entities for the stored metrics, rate-limited
states, and removal of what was announced (`gateway.homeassistant.wiring`)."""
