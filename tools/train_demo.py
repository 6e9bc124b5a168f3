#!/usr/bin/env python3
"""Train the shipped demo policies: an LTC (or, with ``--cell cfc``, a CfC) with NCP wiring
that balances the cart-pole.

Behaviour cloning of an LQR controller (seeded, a few minutes on 2 CPU cores):
1. LQR gain K from the cart-pole linearised about upright (discrete Riccati iteration).
2. Roll out the plant (edgeliquid.hil.sim.CartPole) under LQR + exploration noise, with
   irregular sample times (5-20 ms), recording sensor sequences and LQR forces.
3. Fit ncps LTC(4, AutoNCP(12, 1)) (or CfC(4, AutoNCP(12, 1))) to the forces (inputs
   normalised as the config does).
4. Check it in closed loop on the simulator plant at 100 Hz and 1 kHz, then export
   with the project's exporter into edgeliquid/data/cartpole_ncp.onnx (cartpole_cfc.onnx).

    python tools/train_demo.py [--cell ltc|cfc] [--epochs N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from ncps.torch import LTC, CfC
from ncps.wirings import AutoNCP

from edgeliquid.hil.sim import CartPole
from edgeliquid.model.export import export_module

MODEL_DT = 0.01  # s of real time per model time unit
SCALE = np.array([1.0, 1.0, 5.0, 1.0])  # input normalisation (config: scale)
FORCE_SCALE = 10.0  # output: force = y * 10 N


def lqr_gain(dt: float = 0.01) -> np.ndarray:
    p = CartPole(np.random.default_rng(0))
    eps, f0 = 1e-5, 0.0
    a = np.zeros((4, 4))
    b = np.zeros(4)

    def f(s, u):
        p.s = s.copy()
        p.step(u, dt, substeps=1)
        return p.s

    s0 = np.zeros(4)
    for i in range(4):
        d = np.zeros(4)
        d[i] = eps
        a[:, i] = (f(s0 + d, f0) - f(s0 - d, f0)) / (2 * eps)
    b[:] = (f(s0, eps) - f(s0, -eps)) / (2 * eps)
    q, r = np.diag([1.0, 1.0, 10.0, 1.0]), np.array([[0.1]])
    bm = b[:, None]
    pm = q.copy()
    for _ in range(2000):
        k = np.linalg.solve(r + bm.T @ pm @ bm, bm.T @ pm @ a)
        pm = q + a.T @ pm @ (a - bm @ k)
    return k[0]


def rollouts(k: np.ndarray, n: int, steps: int, rng: np.random.Generator):
    xs = np.zeros((n, steps, 4), np.float32)
    ys = np.zeros((n, steps, 1), np.float32)
    el = np.zeros((n, steps, 1), np.float32)
    for i in range(n):
        p = CartPole(rng, init_scale=0.15)
        for t in range(steps):
            dt = rng.uniform(0.001, 0.02)
            obs = p.s + rng.normal(0, 0.005, 4)
            u = float(np.clip(-k @ obs, -10, 10))
            xs[i, t] = obs * SCALE
            ys[i, t] = u / FORCE_SCALE
            el[i, t] = dt / MODEL_DT
            p.step(u + rng.normal(0, 2.0), dt)  # exploration: visit states LQR must correct
    return xs, ys, el


def unroll(model: LTC | CfC, xs: torch.Tensor, el: torch.Tensor) -> torch.Tensor:
    """ncps LTC over [B, T, I] with per-sample elapsed [B, T, 1].

    Steps the cell directly with elapsed shaped [B, 1]: ncps' LTC.forward squeezes it
    to [B] and then broadcasts it across neurons, which fails (or is wrong) for B > 1.
    """
    h = torch.zeros(xs.shape[0], model.state_size)
    out = []
    for t in range(xs.shape[1]):
        y, h = model.rnn_cell(xs[:, t], h, el[:, t])
        out.append(y)
    return torch.stack(out, dim=1)


def closed_loop(model: LTC | CfC, rate_hz: float, seconds: float, seed: int) -> tuple[float, float]:
    """(max |theta| rad, max |x| m) over ``seconds`` of closed loop from a random start."""
    rng = np.random.default_rng(seed)
    p = CartPole(rng)
    h = torch.zeros(1, model.state_size)
    worst = 0.0
    worst_x = 0.0
    dt = 1.0 / rate_hz
    with torch.no_grad():
        for _ in range(int(seconds * rate_hz)):
            x = torch.tensor((p.s * SCALE)[None, None], dtype=torch.float32)
            y, h = model.rnn_cell(x[:, 0], h, torch.full((1, 1), dt / MODEL_DT))
            p.step(float(y[0, 0]) * FORCE_SCALE, dt)
            worst = max(worst, abs(p.angle))
            worst_x = max(worst_x, abs(float(p.s[0])))
            if worst > 0.5:
                break
    return worst, worst_x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", choices=["ltc", "cfc"], default="ltc")
    ap.add_argument("--epochs", type=int, default=None, help="default: 1500 (ltc), 1000 (cfc)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: edgeliquid/data/cartpole_{ncp,cfc}.onnx")
    args = ap.parse_args()
    data = Path(__file__).resolve().parents[1] / "edgeliquid/data"
    args.out = args.out or str(data / ("cartpole_ncp.onnx" if args.cell == "ltc" else "cartpole_cfc.onnx"))
    args.epochs = args.epochs or (1500 if args.cell == "ltc" else 1000)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    k = lqr_gain()
    print("LQR gain", k)
    xs, ys, el = map(torch.tensor, rollouts(k, 512, 64, rng))
    cls = LTC if args.cell == "ltc" else CfC  # CfC: mode "default", as ncps constructs it
    model = cls(4, AutoNCP(12, 1), batch_first=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs, eta_min=1e-3)
    t0 = time.time()
    for epoch in range(args.epochs):
        idx = torch.randperm(xs.shape[0])[:64]
        pred = unroll(model, xs[idx], el[idx])
        loss = torch.mean((pred - ys[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if epoch % 50 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch} loss {loss.item():.5f} ({time.time() - t0:.0f}s)", flush=True)
    checks = {f"{hz}Hz_seed{s}": closed_loop(model, hz, 20.0, s) for hz in (100, 1000) for s in range(3)}
    print("closed-loop (max |theta| rad, max |x| m):", json.dumps(checks))
    # Balanced = pole within 0.2 rad AND cart within 2.4 m (no drifting away to keep it up).
    ok = all(th < 0.2 and x < 2.4 for th, x in checks.values())
    export_module(
        model,
        args.out,
        input_names="x,x_dot,theta,theta_dot",
        output_names="force",
        input_normalization=json.dumps({"offset": [0, 0, 0, 0], "scale": SCALE.tolist()}),
        training=json.dumps(
            {
                "script": f"tools/train_demo.py --cell {args.cell}",
                "seed": args.seed,
                "epochs": args.epochs,
                "teacher": "LQR",
                "lqr_gain": k.round(4).tolist(),
                "model_dt_s": MODEL_DT,
                "force_scale_N": FORCE_SCALE,
                "final_loss": float(loss.detach()),
                "closed_loop_max_abs_theta": checks,
            }
        ),
    )
    print(f"wrote {args.out}; closed loop {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
