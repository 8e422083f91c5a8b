"""The payload's error-correcting code: a 32-bit release id + 16-bit CRC, convolutionally coded
(rate 1/2, constraint length 7, the (133, 171) octal pair used by 802.11 and DVB) and decoded
by soft-decision Viterbi.

Written here because no maintained, offline-installable library offers a small soft Viterbi
decoder over numpy (commpy is unmaintained); the code is 30 lines and tested against its
encoder.
"""

from __future__ import annotations

import binascii

import numpy as np

ID_BITS = 32
CRC_BITS = 16
K = 7  # constraint length
POLYS = (0o133, 0o171)
MESSAGE_BITS = ID_BITS + CRC_BITS
CODED_BITS = len(POLYS) * (MESSAGE_BITS + K - 1)  # zero tail closes the trellis

_STATES = 1 << (K - 1)


def _parity(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    out = np.zeros_like(x)
    while x.any():
        out ^= x & 1
        x >>= 1
    return out


# For each state (the last K-1 input bits, newest in the top bit) and input bit: the coded pair.
_REG = np.arange(_STATES)[:, None] | (np.arange(2)[None, :] << (K - 1))  # (S, 2) register
_OUT = np.stack([_parity(_REG & p) for p in POLYS], axis=-1)  # (S, 2, 2) coded bits
_NEXT = _REG >> 1  # the register shifted: the next state


def crc16(release_id: int) -> int:
    """The release id's CRC-16 (CCITT): a blind reader takes a wrongly decoded id for a right
    one with P = 2^-16."""
    return binascii.crc_hqx(release_id.to_bytes(4, "big"), 0)


def message(release_id: int) -> np.ndarray:
    value = (release_id << CRC_BITS) | crc16(release_id)
    return np.array([(value >> k) & 1 for k in range(MESSAGE_BITS - 1, -1, -1)], dtype=np.uint8)


def encode(bits: np.ndarray) -> np.ndarray:
    """Message bits (0/1) → coded bits, the register starting and ending at zero."""
    state = 0
    out = []
    for b in [*bits.tolist(), *[0] * (K - 1)]:
        out.extend(_OUT[state, b].tolist())
        state = int(_NEXT[state, b])
    return np.array(out, dtype=np.uint8)


def decode(soft: np.ndarray) -> np.ndarray:
    """Soft values (> 0 reads 1; magnitude = confidence) → the most likely message bits."""
    return decode_list(soft, 1)[0]


def decode_list(soft: np.ndarray, size: int) -> list[np.ndarray]:
    """The `size` most likely messages, best first (parallel list Viterbi: each state keeps its
    `size` best paths). A blind reader takes the first whose CRC matches, which recovers ids
    the best path alone gets wrong (CRC-aided list decoding), at `size` times the CRC's
    chance of passing a wrong id."""
    steps = soft.reshape(-1, len(POLYS))
    nxt = np.arange(_STATES)
    newest = nxt >> (K - 2)  # the input bit that led into each state
    pred = ((nxt & (_STATES // 2 - 1)) << 1)[:, None] | np.arange(2)  # (S, 2) predecessors
    signs = 2.0 * _OUT[pred, newest[:, None]] - 1.0  # (S, 2, 2) coded ±1 of each move
    metric = np.full((_STATES, size), -np.inf)
    metric[0, 0] = 0.0
    # per step and state, each kept path's (predecessor state, its rank there)
    back = np.zeros((len(steps), _STATES, size, 2), dtype=np.int64)
    ranks = np.arange(size)
    for t, pair in enumerate(steps):
        gain = metric[pred] + (signs * pair).sum(-1)[:, :, None]  # (S, 2, size)
        flat = gain.reshape(_STATES, 2 * size)
        order = np.argsort(-flat, axis=1, kind="stable")[:, :size]
        back[t, :, :, 0] = pred[nxt[:, None], order // size]
        back[t, :, :, 1] = order % size
        metric = np.take_along_axis(flat, order, axis=1)
    found = []
    for rank in ranks[np.isfinite(metric[0])]:  # the zero tail ends every path at state 0
        state, k, bits = 0, int(rank), []
        for t in range(len(steps) - 1, -1, -1):
            bits.append(state >> (K - 2))
            state, k = (int(v) for v in back[t, state, k])
        found.append(np.array(bits[::-1][: len(steps) - (K - 1)], dtype=np.uint8))
    return found


def release_of(bits: np.ndarray) -> int | None:
    """The release id of decoded message bits, or None when their CRC does not match."""
    value = int("".join(map(str, bits.tolist())), 2)
    release_id = value >> CRC_BITS
    return release_id if crc16(release_id) == value & 0xFFFF else None
