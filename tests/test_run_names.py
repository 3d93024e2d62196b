"""Run names say briefly what differs (model, data, the overrides that change the experiment) and
never hold a path, a URI or a credential; what is logged or printed is redacted (`tracking.names`)."""

from __future__ import annotations

from omegaconf import OmegaConf

from audiocnn.repeats import run_name_of
from audiocnn import repeats, tracking
from audiocnn.config import compose_config
from audiocnn.tracking import names

# What a Hydra job of a cross-validation on a CSV passes as its run name suffix
# (`experiment.run_experiment`: every override but model= and data=, joined by commas).
CSV_CV_SUFFIX = ",".join([
    "data.csv=/home/someone/recordings/list.csv", "data.protocol=cv", "optimizer.lr=3e-4",
    "paths.raw=/mnt/audio/raw", "paths.models=outputs/m", "tracking.uri=http://admin:hunter2@mlflow.lan:5000",
    "tracking.experiment=mine", "+deploy.api_token=abc123", "model.dropout=0.3",
    "trainer.max_epochs=40", "features.num_workers=4", "hydra.run.dir=./x",
])


def test_a_csv_cross_validation_gets_a_short_name_without_paths():
    cfg = compose_config(["data=csv", "data.csv=/home/someone/recordings/list.csv", "data.protocol=cv"])
    name = repeats.parent_run_name(cfg, CSV_CV_SUFFIX)
    assert name == "crnn_gru-csv-lr=3e-4,dropout=0.3,max_epochs=40-cv"
    assert len(name) <= names.MAX_NAME_LENGTH
    variant = repeats.Variant("fold-3", "3", 0)
    assert repeats.variant_run_name(cfg, variant, CSV_CV_SUFFIX) == name.removesuffix("-cv") + "-fold-3"
    assert run_name_of(cfg) == "crnn_gru-csv"


def test_credentials_are_never_in_a_run_name():
    cfg = compose_config(["data=csv"])
    for suffix in (CSV_CV_SUFFIX, "tracking.uri=https://user:hunter2@h", "+db.password=hunter2",
                   "+x.secret_key=hunter2", "+auth.token=hunter2", "+my.note=hunter2://x@y"):
        name = run_name_of(cfg, suffix)
        assert "hunter2" not in name and "abc123" not in name, name
    given = compose_config(["data=csv", "tracking.run_name=see http://u:hunter2@host"])
    assert run_name_of(given) == "see http://***@host"


def test_long_names_are_capped_deterministic_and_distinct():
    many = [f"model.layer{i}_width={i * 16}" for i in range(20)]
    first = names.run_name("crnn_gru", "csv", many, "cv")
    assert len(first) == names.MAX_NAME_LENGTH and first.endswith("-cv")
    assert first == names.run_name("crnn_gru", "csv", list(many), "cv")
    assert first != names.run_name("crnn_gru", "csv", [*many[:-1], "model.layer19_width=1"], "cv")


def test_keys_shared_by_two_overrides_stay_whole():
    assert names.name_parts("trainer.batch_size=8 features.batch_size=4 optimizer.lr=0.1") == [
        "trainer.batch_size=8", "features.batch_size=4", "lr=0.1"]


def test_redaction_of_uris_and_secret_settings():
    assert names.redact("at http://admin:pw@127.0.0.1:5000/#/x and https://tok@h") == "at http://***@127.0.0.1:5000/#/x and https://***@h"
    assert names.redact_overrides(["tracking.uri=http://a:b@h", "+db.PASSWORD=x", "optimizer.lr=1"]) == \
        "tracking.uri=http://***@h +db.PASSWORD=*** optimizer.lr=1"
    flat = tracking.flatten_config(OmegaConf.to_container(compose_config(["tracking.uri=http://admin:hunter2@h:5000", "+deploy.api_token=t0k"]), resolve=True))
    assert flat["tracking.uri"] == "http://***@h:5000" and flat["deploy.api_token"] == "***"


def test_a_failure_reason_holding_credentials_is_recorded_redacted(tmp_path):
    import mlflow
    import pytest

    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path)
    with pytest.raises(RuntimeError):
        with tracking.open_run(tracking.store_of(cfg.tracking), run_name="leaky") as run:
            raise RuntimeError("upload to https://bot:hunter2@store.example/x failed")
    tags = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri).get_run(run.info.run_id).data.tags
    assert tags[tracking.FAILURE_TAG] == "RuntimeError: upload to https://***@store.example/x failed"
    assert "hunter2" not in tags["audiocnn.end_reason"]
