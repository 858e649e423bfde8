from __future__ import annotations

import anndata as ad
import numpy as np

import st_hist2st as hist2st
from st_hist2st._cli import main


def test_fit_and_predict_on_h5ad(adata, tmp_path, tiny):
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    genes = tmp_path / "genes.txt"
    genes.write_text("\n".join(adata.var_names[:4]))
    assert (
        main(
            [
                "fit",
                str(path),
                "--image-key",
                "hires",
                "--model",
                str(tmp_path / "m"),
                "--genes",
                str(genes),
                "--epochs",
                "1",
                "--accelerator",
                "cpu",
                "--seed",
                "1",
                *(arg for key, value in tiny.items() for arg in ("--set", f"{key}={value}")),
            ]
        )
        == 0
    )
    model = hist2st.Hist2ST.load(tmp_path / "m")
    assert model.genes == list(adata.var_names[:4])
    assert model.architecture.channel == tiny["channel"]
    assert main(["predict", str(path), "--model", str(tmp_path / "m"), "--output", str(tmp_path / "out.h5ad")]) == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.layers["hist2st"].shape == adata.shape
    m = str(tmp_path / "m")
    assert main(["predict", str(path), "--model", m, m, "--output", str(tmp_path / "twice.h5ad")]) == 0
    twice = ad.read_h5ad(tmp_path / "twice.h5ad")
    assert twice.uns["hist2st"]["n_models"] == 2
    np.testing.assert_allclose(twice.layers["hist2st"], out.layers["hist2st"], rtol=1e-6, equal_nan=True)
    for value, expected in (("none", None), ("30", 30)):
        target = tmp_path / f"windows_{value}.h5ad"
        assert main(["predict", str(path), "--model", m, "--output", str(target), "--max-spots", value]) == 0
        assert ad.read_h5ad(target).uns["hist2st"].get("max_spots") == expected


def test_predict_with_uncertainty_writes_it_into_the_file(adata, tmp_path, tiny, capsys):
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    common = ["--image-key", "hires", "--epochs", "1", "--accelerator", "cpu"]
    architecture = [arg for k, v in tiny.items() for arg in ("--set", f"{k}={v}")]
    assert main(["fit", str(path), "--model", str(tmp_path / "plain"), *common, *architecture]) == 0
    out = tmp_path / "out.h5ad"
    # the default preset has no ZINB term: refused before predicting, naming the fix
    assert main(["predict", str(path), "--model", str(tmp_path / "plain"), "--output", str(out), "--uncertainty"]) == 2
    assert "zinb" in capsys.readouterr().err and not out.exists()
    zinb = [*architecture, "--set", "zinb=0.25", "--set", "init_zinb_bias=true"]
    assert main(["fit", str(path), "--model", str(tmp_path / "zinb"), *common, *zinb]) == 0
    assert main(["predict", str(path), "--model", str(tmp_path / "zinb"), "--output", str(out), "--uncertainty"]) == 0
    result = ad.read_h5ad(out)
    record = result.uns["hist2st"]["uncertainty"]
    assert result.layers[record["std"]].shape == adata.shape and (result.layers[record["std"]] >= 0).all()
    assert sorted(record["intervals"]) == ["80", "95"]
