"""Chemistry shared by the data (cellsim's assay) and the encoders (perturbation codes): Morgan
fingerprints of SMILES strings (RDKit) and the Tanimoto similarity between fingerprints."""

from __future__ import annotations

import numpy as np

from factordiff.errors import FactordiffError

MORGAN_BITS = 1024


def morgan(smiles: list[str], bits: int = MORGAN_BITS, radius: int = 2) -> np.ndarray:
    """Morgan fingerprints (N, bits) uint8 of SMILES strings; an invalid one is an error naming it."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator

    RDLogger.DisableLog("rdApp.*")
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    out = np.zeros((len(smiles), bits), np.uint8)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise FactordiffError(f"SMILES {s!r}: not a valid molecule")
        out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def tanimoto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Tanimoto similarity (|a & b| / |a | b|) between binary fingerprints a (N, F) and b (M, F)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
