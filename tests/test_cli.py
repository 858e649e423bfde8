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
            ]
        )
        == 0
    )
    model = hist2st.Hist2ST.load(tmp_path / "m")
    assert model.genes == list(adata.var_names[:4])
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
