"""Remote overlays (`gateway.updates.overlay`): what the cloud may change, and privacy only
towards more privacy than the home's own config."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.updates.overlay import OverlayError, apply_overlay
from schemas.batch import Policy


def local(**sections: Any) -> GatewayConfig:
    return GatewayConfig.model_validate({"gateway_id": "gw-1", **sections})


def refused(config: GatewayConfig, overlay: dict[str, Any]) -> str:
    with pytest.raises(OverlayError) as err:
        apply_overlay(config, overlay)
    return str(err.value)


def test_safe_fields_merge_and_thresholds_alone_need_no_restart() -> None:
    base = local(inference={"thresholds": {"alarm": {"cooldown_s": 2.0}}})
    live = apply_overlay(
        base, {"inference": {"thresholds": {"sensor_anomaly": {"threshold": 0.95}}}}
    )
    assert live.config.inference.thresholds == {
        "alarm": {"cooldown_s": 2.0},
        "sensor_anomaly": {"threshold": 0.95},
    }
    assert not live.needs_restart and live.fields == ("inference.thresholds",)
    paced = apply_overlay(
        base,
        {"aggregation": {"window_s": 300}, "uplink": {"send_interval_s": 30.0},
         "inference": {"sensor_window_s": 600.0}},
    )  # fmt: skip
    assert paced.config.aggregation.window_s == 300 and paced.config.uplink.send_interval_s == 30
    assert paced.needs_restart
    assert base.aggregation.window_s == 60  # the local config is not changed


@pytest.mark.parametrize(
    ("overlay", "field"),
    [
        ({"mqtt": {"url": "mqtt://evil:1883"}}, "section 'mqtt'"),
        ({"storage": {"path": "/tmp/x.db"}}, "section 'storage'"),
        ({"admin": {"host": "0.0.0.0"}}, "section 'admin'"),
        ({"uplink": {"url": "https://evil.example"}}, "uplink.url"),
        ({"uplink": {"token": "x"}}, "uplink.token"),
        ({"privacy": {"secret": "00" * 16}}, "privacy.secret"),
        ({"privacy": {"secret_file": "/tmp/s"}}, "privacy.secret_file"),
        ({"inference": {"models_dir": "/tmp"}}, "inference.models_dir"),
        ({"updates": {"root_file": "/tmp/root.json"}}, "section 'updates'"),
        ({"gateway_id": "other"}, "section 'gateway_id'"),
    ],
)
def test_what_may_not_change_remotely_is_refused_by_name(
    overlay: dict[str, Any], field: str
) -> None:
    message = refused(local(), overlay)
    assert field in message and "may not be changed remotely" in message


def test_the_gateways_own_models_refuse_bad_values_naming_the_field() -> None:
    message = refused(local(), {"aggregation": {"window_s": 0}})
    assert message.startswith("overlay: aggregation.window_s:")
    message = refused(local(), {"uplink": {"backoff_min_s": 100.0}})  # > backoff_max_s 60
    assert "uplink" in message and "backoff_max_s" in message
    # health data may never be released exactly, whatever asks
    message = refused(local(), {"privacy": {"policies": {"heart_rate": "aggregate"}}})
    assert "heart_rate" in message


def test_privacy_only_towards_more_privacy() -> None:
    base = local(privacy={"epsilon": 0.5, "min_window_count": 5})
    assert base.privacy.policy_of("temperature") is Policy.AGGREGATE
    assert base.privacy.policy_of("inference_occupancy") is Policy.LOCAL
    stricter = apply_overlay(
        base,
        {"privacy": {"epsilon": 0.2, "min_window_count": 10,
                     "policies": {"temperature": "noised", "humidity": "local"}}},
    )  # fmt: skip
    p = stricter.config.privacy
    assert (p.epsilon, p.min_window_count) == (0.2, 10)
    assert p.policy_of("temperature") is Policy.NOISED and p.policy_of("humidity") is Policy.LOCAL
    # weaker, each named
    message = refused(base, {"privacy": {"policies": {"inference_occupancy": "aggregate"}}})
    assert "privacy.policies.inference_occupancy" in message and "local" in message
    assert "privacy.epsilon" in refused(base, {"privacy": {"epsilon": 1.0}})
    assert "privacy.min_window_count" in refused(base, {"privacy": {"min_window_count": 2}})
    assert "privacy.default_policy" in refused(base, {"privacy": {"default_policy": "aggregate"}})
    assert "privacy.budget_epsilon" in refused(base, {"privacy": {"budget_epsilon": 1000.0}})
    assert "privacy.pseudonym_rotation_days" in refused(
        base, {"privacy": {"pseudonym_rotation_days": 0}}
    )
    assert "privacy.significant_digits" in refused(base, {"privacy": {"significant_digits": 12}})
    # noised -> aggregate is weaker too, for a metric the home noised
    noised = local(privacy={"policies": {"temperature": "noised"}})
    assert "privacy.policies.temperature" in refused(
        noised, {"privacy": {"policies": {"temperature": "aggregate"}}}
    )


def test_the_home_may_let_the_cloud_release_a_named_metric() -> None:
    base = local(updates={"remote_may_release": ["inference_occupancy"]})
    out = apply_overlay(base, {"privacy": {"policies": {"inference_occupancy": "aggregate"}}})
    assert out.config.privacy.policy_of("inference_occupancy") is Policy.AGGREGATE
    assert "humidity" in refused(
        local(privacy={"policies": {"humidity": "local"}}, updates={"remote_may_release": []}),
        {"privacy": {"policies": {"humidity": "aggregate"}}},
    )


def test_an_overlay_that_is_not_tables_is_refused() -> None:
    assert "expected a table" in refused(local(), {"inference": 3})
    assert apply_overlay(local(), None).fields == ()
