"""The manifests name models so that archives outlive them: encode jobs use weights that cannot
change under an archive (a seeded or shipped name, or a fingerprint-named directory) and keep them
in the shared model store; decode jobs look there."""

from __future__ import annotations

import re

import infra_checks as ic
import pytest

from sprdiff.presets import PRESETS, SHIPPED_MODELS

FINGERPRINT_DIR = re.compile(r".*/[0-9a-f]{64}/?")
OVERLAYS = [d.name for d in ic.overlay_dirs()]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if ic.kustomize_command() is None:
        pytest.skip("rendering the overlays needs kustomize, or kubectl >= 1.27 (kustomize v5), on PATH")
    return {name: ic.render(ic.OVERLAYS / name) for name in OVERLAYS}


def _settings(resources: list[dict]) -> dict[str, str]:
    [settings] = [r for r in resources
                  if r.get("kind") == "ConfigMap" and r["metadata"]["name"] == ic.SETTINGS_CONFIGMAP]
    return settings["data"]


def _is_immutable_model(source: str) -> bool:
    seeded = source in PRESETS and PRESETS[source]().init_seed is not None
    return seeded or source in SHIPPED_MODELS or bool(FINGERPRINT_DIR.fullmatch(source))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_encode_jobs_use_weights_named_by_fingerprint_and_keep_them_in_the_store(overlay, rendered):
    resources = rendered[overlay]
    settings = _settings(resources)
    assert _is_immutable_model(settings["SPRDIFF_MODEL"]), settings["SPRDIFF_MODEL"]
    assert settings["SPRDIFF_MODEL_STORE"].startswith(settings["SPRDIFF_BUCKET"])
    jobs = {"encode-job": 0, "decode-job": 0}
    for command in ic.commands(resources):
        args = ic.parse_sprdiff(ic.command_argv(command, resources))
        if args.command == "encode-job":
            assert args.model == settings["SPRDIFF_MODEL"], command.where
            assert args.model_store == settings["SPRDIFF_MODEL_STORE"], command.where
        elif args.command == "decode-job":
            assert args.model is None, f"{command.where}: decode must use each record's own weights"
            assert args.model_store == [settings["SPRDIFF_MODEL_STORE"]], command.where
        jobs[args.command] = jobs.get(args.command, 0) + 1
    assert jobs["encode-job"] >= 1


def test_the_check_refuses_a_moving_model_pointer():
    assert not _is_immutable_model("s3://sprdiff-prod/training/runs/stage2-lambda8/model")
    assert not _is_immutable_model("sd-turbo")  # built from hub sources that can change
    assert _is_immutable_model("s3://b/runs/x/models/" + "ab" * 32)
    assert _is_immutable_model("tiny") and _is_immutable_model("demo")
