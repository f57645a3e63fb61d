"""The export log: third-party INFO chatter lowered, warnings and the result line kept."""

from __future__ import annotations

import logging

import pytest

from anomalib_bgad.export_logs import EXPORT_CHATTER_LOGGERS, quiet_export_logs


def test_chatter_loggers_drop_info_but_keep_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # as anomalib's CLI does for the root logger
    chatter = logging.getLogger("onnx_ir.passes.common.initializer_deduplication")
    with quiet_export_logs():
        chatter.info("Replaced initializer 'val_1' with existing initializer 'val_0'")
        chatter.warning("opset down-conversion failed")
        logging.getLogger("anomalib").info("Exported model to results/weights/openvino/model.xml")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["opset down-conversion failed", "Exported model to results/weights/openvino/model.xml"]
    chatter.info("after the export")  # the levels are restored
    assert caplog.records[-1].getMessage() == "after the export"
    assert all(logging.getLogger(name).level == logging.NOTSET for name in EXPORT_CHATTER_LOGGERS)


def test_a_level_the_user_set_is_kept_and_levels_are_restored_on_error() -> None:
    logger = logging.getLogger("onnxscript")
    logger.setLevel(logging.DEBUG)
    try:
        with pytest.raises(RuntimeError), quiet_export_logs():
            assert logger.isEnabledFor(logging.DEBUG)
            assert not logging.getLogger("onnx_ir").isEnabledFor(logging.INFO)
            raise RuntimeError
        assert logger.level == logging.DEBUG
        assert logging.getLogger("onnx_ir").level == logging.NOTSET
    finally:
        logger.setLevel(logging.NOTSET)


def test_bgad_to_onnx_runs_with_the_chatter_lowered(
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Wiring: what anomalib's export (``to_onnx``, also called by ``to_openvino``) logs while BGAD exports."""
    from anomalib.models import AnomalibModule

    from anomalib_bgad import Bgad

    def fake_export(self, export_root, model_file_name="model", input_size=None, **kwargs):
        logging.getLogger("onnxscript.optimizer._constant_folding").info("Skipping constant folding for node ...")
        logging.getLogger("onnxscript.optimizer._constant_folding").warning("a warning about the model")
        return kwargs["opset_version"]

    monkeypatch.setattr(AnomalibModule, "to_onnx", fake_export)
    caplog.set_level(logging.INFO)
    model = Bgad.__new__(Bgad)  # to_onnx needs no initialised state
    assert Bgad.to_onnx(model, "unused") == 18
    assert [record.getMessage() for record in caplog.records] == ["a warning about the model"]


@pytest.mark.slow
def test_anomalib_export_prints_few_lines_and_where_the_model_went(cli_trained_and_exported) -> None:
    export = cli_trained_and_exported.export
    output = export.stdout + export.stderr
    lines = output.splitlines()
    # 8,371 lines before (2,416 with 2 coupling blocks), mostly onnxscript/onnx_ir INFO records; 37 here.
    assert len(lines) < 80, "\n".join(lines[:100])
    assert "initializer_deduplication" not in output and "constant folding" not in output.lower()
    xml = cli_trained_and_exported.xml
    assert xml.is_file()
    assert any(f"Exported model to {xml}" in line for line in lines)
