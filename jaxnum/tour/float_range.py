"""Claim: bf16 keeps fp32's exponent range; fp16 tops out at 65504.

bfloat16 is float32 with the fraction cut from 23 to 7 bits: the same 8-bit
exponent, so the same normal range 2^-126..2^128 at 2-3 decimal digits;
float16 spends 5 bits on the exponent and 10 on the fraction, so its largest
finite value is (2 - 2^-10) 2^15 = 65504 (IEEE 754-2019, Sec. 3.6; Kalamkar
et al., "A Study of BFLOAT16 for Deep Learning Training", 2019,
https://arxiv.org/abs/1905.12322, Sec. 2; Micikevicius et al., "Mixed
Precision Training", ICLR 2018, Sec. 3.2; for the float8s, Micikevicius et
al., "FP8 Formats for Deep Learning", 2022, https://arxiv.org/abs/2209.05433,
Table 1).

Method: every figure is measured by casting float64 values to the format and
looking at what comes back, in the spirit of Cody's MACHAR (ACM TOMS 14, 1988):

- the overflow threshold is the smallest float64 that casts to inf (or nan:
  float8_e4m3fn has no inf), found by bisection on the float64 bit patterns;
  the largest finite value is the cast of the float64 just below it;
- the underflow threshold is the largest float64 that casts to 0; the smallest
  subnormal is the cast of the float64 just above it;
- eps is the largest 2^-j with 1 + 2^-j representable (cast exactly); the
  smallest normal is the smallest power of two p with p (1 + eps) representable
  (below it the spacing is fixed, so full precision is lost).

These host casts use numpy with the jnp dtypes (ml_dtypes behind them).
ml_dtypes converts float64 to bfloat16 and the float8s through float32, so
their two thresholds can sit up to half a float32 ulp off the exact tie (double
rounding); the representable figures (max, normals, subnormals) are exact. The
same probe values (70000, 3e38, 1e-39, 1e-45 by default) are also cast on the
JAX device under jit, and the device is checked for subnormal arithmetic
(``v + v`` for the format's smallest subnormal ``v``): XLA on CPU flushes
float32 subnormals to zero, so bfloat16 and float32 arithmetic stop at the
smallest normal there. The measured figures are compared to
``jaxnum.precision.float_formats()``.

Verdict: "same exponent range" is taken literally: bf16's largest and smallest
normal binades, floor(log2 max) and log2(smallest normal), equal fp32's. "Tops
out at 65504": fp16's measured largest finite value is 65504 exactly and a
probe above it (70000) overflows to inf. Both: holds; one: holds partly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum.precision import float_format, float_formats
from jaxnum.tour._common import pyplot
from jaxnum.tour.result import ClaimResult

FORMAT_NAMES = tuple(f.name for f in float_formats())  # float32, float16, bfloat16, 2 float8s
FIGURES = ("max", "smallest_normal", "smallest_subnormal", "eps")
_REQUIRED = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Config:
    """The formats to measure and the probe values cast to each of them.

    ``formats`` must include float32, float16 and bfloat16 (the claim's three);
    ``probes`` are positive finite float64 values (fp16's overflow probe is
    the smallest probe above 65504).
    """

    formats: tuple[str, ...] = FORMAT_NAMES
    probes: tuple[float, ...] = (70000.0, 3e38, 1e-39, 1e-45)

    @classmethod
    def quick(cls) -> Config:
        return cls()  # a few hundred casts: already well under a second

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in FORMAT_NAMES]
        if unknown:
            raise ValueError(f"Config: formats must be among {FORMAT_NAMES}, got {unknown}")
        missing = [f for f in _REQUIRED if f not in self.formats]
        if missing:
            raise ValueError(f"Config: formats must include {_REQUIRED}, missing {missing}")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"Config: formats repeat: {self.formats}")
        if not self.probes or not all(
            isinstance(p, int | float) and 0 < p < float("inf") for p in self.probes
        ):
            raise ValueError(f"Config: probes must be positive finite numbers, got {self.probes}")
        if not any(p > 65504 for p in self.probes):
            raise ValueError("Config: probes need one value above 65504 (fp16's overflow probe)")


def _cast(values, dtype) -> np.ndarray:
    """float64 values -> ``dtype`` -> float64 on the host (numpy / ml_dtypes rounding)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return np.asarray(values, np.float64).astype(dtype).astype(np.float64)


def _first_true(pred, lo: float, hi: float) -> float:
    """Smallest float64 x in (lo, hi] with ``pred(x)``, given pred(lo) False, pred(hi) True.

    Bisection on the bit patterns: positive float64s are ordered like their int64 bits.
    """
    a = int(np.float64(lo).view(np.int64))
    b = int(np.float64(hi).view(np.int64))
    while b - a > 1:
        mid = (a + b) // 2
        if pred(np.int64(mid).view(np.float64)):
            b = mid
        else:
            a = mid
    return float(np.int64(b).view(np.float64))


def measure_format(dtype) -> dict:
    """max, smallest normal, smallest subnormal, eps and thresholds of ``dtype``, by casting."""
    dt = jnp.dtype(dtype)
    over = _first_true(lambda x: not np.isfinite(_cast(x, dt)), 1.0, 1e300)
    largest = float(_cast(np.nextafter(over, 0.0), dt))
    nonzero = _first_true(lambda x: _cast(x, dt) != 0, 5e-324, 1.0)
    subnormal = float(_cast(nonzero, dt))
    steps = 2.0 ** -np.arange(1, 53, dtype=np.float64)  # 1 + 2^-j is exact in float64
    exact = _cast(1.0 + steps, dt) == 1.0 + steps
    eps = float(steps[exact].min())
    powers = 2.0 ** np.arange(-1070, 1, dtype=np.float64)
    full = (_cast(powers, dt) == powers) & (_cast(powers * (1 + eps), dt) == powers * (1 + eps))
    normal = float(powers[full].min())
    return {
        "max": largest,
        "smallest_normal": normal,
        "smallest_subnormal": subnormal,
        "eps": eps,
        "overflow_threshold": over,
        "underflow_threshold": float(np.nextafter(nonzero, 0.0)),
        "overflows_to": "inf" if np.isinf(_cast(over, dt)) else "nan",
        "emax": math.floor(math.log2(largest)),
        "emin": round(math.log2(normal)),
    }


def _device_casts(probes, dtype) -> list[float]:
    """The probes cast to ``dtype`` on the JAX device (jit, from float64), back as floats."""
    with jax.enable_x64(True):
        out = jax.jit(lambda v: v.astype(dtype).astype(jnp.float64))(
            jnp.asarray(probes, jnp.float64)
        )
        return [float(v) for v in np.asarray(out)]


def _device_keeps_subnormals(subnormal: float, dtype) -> bool:
    """Whether ``v + v`` on the device gives 2v for the format's smallest subnormal v."""
    v = np.asarray([subnormal]).astype(dtype)
    doubled = np.asarray(jax.jit(lambda a: a + a)(jnp.asarray(v))).astype(np.float64)
    return bool(doubled[0] == 2 * subnormal)


def _describe(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    return "0" if value == 0 else f"{value:.4g}"


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """Measures each format's range by casting; returns the row and a figure (or None).

    ``key`` is unused (the experiment has no randomness); it is accepted for the
    common signature of the tour.
    """
    del key
    formats = {name: measure_format(name) for name in config.formats}
    table = {name: float_format(name)._asdict() for name in config.formats}
    table_agrees = {
        name: all(formats[name][f] == table[name][f] for f in FIGURES) for name in formats
    }
    probes = [float(p) for p in config.probes]
    host = {name: [float(v) for v in _cast(probes, name)] for name in config.formats}
    device = {name: _device_casts(probes, name) for name in config.formats}
    keeps = {
        name: _device_keeps_subnormals(formats[name]["smallest_subnormal"], name)
        for name in config.formats
    }

    f32, f16, bf16 = formats["float32"], formats["float16"], formats["bfloat16"]
    same_range = bf16["emax"] == f32["emax"] and bf16["emin"] == f32["emin"]
    over16 = min(p for p in probes if p > 65504)
    i16 = probes.index(over16)
    fp16_tops = (
        f16["max"] == 65504.0
        and math.isinf(host["float16"][i16])
        and math.isinf(device["float16"][i16])
    )
    verdict = {2: "holds", 1: "holds partly", 0: "does not hold here"}[same_range + fp16_tops]

    def casts(name):
        return ", ".join(f"{p:g}->{_describe(v)}" for p, v in zip(probes, host[name], strict=True))

    flushed = [n for n in config.formats if not keeps[n]]
    differs = [
        f"{n}({p:g})={_describe(d)} on device vs {_describe(h)} on host"
        for n in config.formats
        for p, h, d in zip(probes, host[n], device[n], strict=True)
        if _describe(h) != _describe(d)
    ]
    measured = (
        f"by casting: float32 max {f32['max']:.4g}, smallest normal "
        f"{f32['smallest_normal']:.4g}, subnormal {f32['smallest_subnormal']:.3g}; bfloat16 "
        f"max {bf16['max']:.4g}, normal {bf16['smallest_normal']:.4g}, subnormal "
        f"{bf16['smallest_subnormal']:.3g}; float16 max {f16['max']:.6g}, normal "
        f"{f16['smallest_normal']:.4g}, subnormal {f16['smallest_subnormal']:.3g}"
        + "".join(
            f"; {n} max {formats[n]['max']:.4g} (overflows to {formats[n]['overflows_to']})"
            for n in config.formats
            if n not in _REQUIRED
        )
        + f". Casts: float16 {casts('float16')}; bfloat16 {casts('bfloat16')}; float32 "
        f"{casts('float32')}. float_formats() agrees: "
        f"{'yes' if all(table_agrees.values()) else 'no'}. On the {jax.default_backend()} "
        f"device: "
        + ("; ".join(differs) if differs else "probe casts as on the host")
        + (f"; subnormal arithmetic flushed to 0 in {', '.join(flushed)}" if flushed else "")
        + "."
    )
    why = (
        f"bf16 normal range 2^{bf16['emin']}..2^{bf16['emax']} "
        f"{'equals' if same_range else 'differs from'} fp32's 2^{f32['emin']}..2^{f32['emax']}"
        f" (max {bf16['max']:.3g} vs {f32['max']:.3g}; its subnormals stop at "
        f"{bf16['smallest_subnormal']:.1e} vs {f32['smallest_subnormal']:.1e}: 7 fraction bits, "
        f"not 23); fp16 max {f16['max']:.6g}, {over16:g} -> {_describe(host['float16'][i16])}"
    )
    result = ClaimResult(
        claim="bf16 keeps fp32's exponent range; fp16 tops out at 65504",
        stated="bf16 range = fp32 range (~3.4e38, 1.2e-38); fp16 max 65504",
        measured=measured,
        verdict=verdict,
        why=why,
        data={
            "formats": formats,
            "float_formats_table": table,
            "table_agrees": table_agrees,
            "probes": probes,
            "host_casts": host,
            "device_casts": device,
            "device_keeps_subnormals": keeps,
            "backend": jax.default_backend(),
            "parts": {"bf16_same_exponent_range": same_range, "fp16_max_65504": fp16_tops},
        },
    )
    return result, _figure(formats, probes)


def _figure(formats, probes):
    plt = pyplot()
    if plt is None:
        return None
    from matplotlib.patches import Patch

    names = list(formats)
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 1.8))
    for i, name in enumerate(names):
        f = formats[name]
        sub, low, high = f["smallest_subnormal"], f["smallest_normal"], f["max"]
        ax.barh(i, low - sub, left=sub, color="tab:blue", alpha=0.35, height=0.6)
        ax.barh(i, high - low, left=low, color="tab:blue", height=0.6)
        if np.log10(high / low) > 20:  # a long bar holds its label, clear of the axes' edge
            ax.text(high / 5, i, f"max {high:.5g}", va="center", ha="right", fontsize=8,
                    color="white")  # fmt: skip
        else:
            ax.text(high * 5, i, f"max {high:.5g}", va="center", fontsize=8)
    handles = [
        Patch(color="tab:blue", alpha=0.35, label="subnormals (smallest subnormal .. normal)"),
        Patch(color="tab:blue", label="normal range (smallest normal .. max)"),
    ]
    for p, style in zip(probes, ("--", "-.", ":", (0, (1, 4))) * len(probes), strict=False):
        handles.append(
            ax.axvline(p, color="tab:red", linestyle=style, linewidth=1, label=f"probe {p:g}")
        )
    ax.set_xscale("log")
    ax.set_xlim(1e-50, 1e56)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("magnitude of representable values (log10 scale, dimensionless)")
    ax.set_title("bf16 keeps fp32's exponent range; fp16 tops out at 65504")
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig
