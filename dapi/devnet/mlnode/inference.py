"""The simulated language model: a deterministic stand-in for the weights behind a vLLM server.

Pure functions, no I/O. What it keeps from a real model is what the network relies on:

- **Tokens.** A token is a run of non-space characters with the whitespace before it (`tokenize`), so
  any text splits into tokens that join back into it, and the tokens of a generated text are exactly the
  tokens that were generated. The vocabulary is a fixed list of words; a word is the token `word` at the
  start of an answer and ` word` after it. Other tokens (of an enforced text) exist too, with tail logprobs.
- **Logprobs depend on the context only.** The distribution at each step is derived from a hash chain over
  (model, messages, tokens so far): `state_0 = sha256(model, messages)`, `state_{i+1} = sha256(state_i,
  token_i)`. The seed and the sampling parameters pick a token from it but never change it, as with a
  real model. So a re-run that is forced along the same text (`enforce`, vLLM's `enforced_str`) reports
  the same logprobs, token for token and bit for bit, and another text gets other logprobs.
- **Sampling.** `generate` draws from the distribution with a uniform derived from (seed, choice,
  state); temperature 0 is greedy. The stop token `<|im_end|>` grows likelier with every position (never
  at the first), so answers end by themselves after about a hundred tokens; it is counted in
  `completion_tokens` and listed in the logprobs like vLLM does, but is not part of the text.
- A **wrong model** (`honest=False`) hashes another model key: self-consistent output whose logprobs an
  honest validator does not reproduce.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

EOS_TOKEN = "<|im_end|>"
IM_START = "<|im_start|>"
MAX_TOP_LOGPROBS = 20  # vLLM's default max_logprobs
MAX_MODEL_LEN = 32768

_WORDS = (
    "the a an and or but if then so because of to in on at by for with from as is are was were be been have has "
    "had do does did can could will would should may might must I you he she it we they me him her us them my "
    "your his its our their this that these those here there what which who when where why how all any both "
    "each few more most other some such no not only own same than too very just also now hello hi thanks please "
    "yes okay sure help assist answer question today tomorrow time day week year world people way thing life "
    "work part place case point number group problem fact hand water money story idea model token data network "
    "node chain block epoch proof inference result value price cost energy light sound music book game city "
    "country road house room food tree river sea sky sun moon star fire earth air good new first last long great "
    "little old right big high different small large next early young important few public bad able"
).split()
_PUNCTUATED = [w + p for w in _WORDS[::11] for p in ".,"] + [w + p for w in _WORDS[5::29] for p in "!?"]
VOCAB: tuple[str, ...] = tuple(dict.fromkeys(_WORDS + _PUNCTUATED))
_VOCAB_INDEX = {w: i for i, w in enumerate(VOCAB)}
EOS_ID = 2 * len(VOCAB)
_OOV_IDS = 150_000  # token ids of non-vocabulary tokens lie above EOS_ID, in a range of this size

_TOKEN_RE = re.compile(r"\s*\S+|\s+")
_TAIL_MASS = 0.02  # the probability of everything outside the top candidates
_CANDIDATES = MAX_TOP_LOGPROBS  # vocabulary tokens per distribution (EOS comes on top)


@dataclass(frozen=True, slots=True)
class Step:
    """One produced token: its text, its logprob, and the top of the distribution it came from."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]  # by logprob, highest first; MAX_TOP_LOGPROBS entries

    @property
    def is_eos(self) -> bool:
        return self.token == EOS_TOKEN

    @property
    def text(self) -> str:
        """What the token adds to the answer's content (the stop token adds nothing)."""
        return "" if self.is_eos else self.token

    def logprobs_json(self, top_n: int) -> dict[str, Any]:
        """The OpenAI/vLLM `logprobs.content[i]` entry, with the `top_n` most likely tokens."""
        return {
            "token": self.token,
            "logprob": self.logprob,
            "bytes": list(self.token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in self.top[:top_n]],
        }


@dataclass(frozen=True, slots=True)
class Completion:
    """One choice: the produced tokens (the stop token last, if it stopped) and why it ended."""

    steps: tuple[Step, ...]
    finish_reason: str  # "stop" (the stop token) or "length" (max_tokens reached)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return len(self.steps)


# --- tokens --------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """The tokens of `text`; joined they give `text` back."""
    return _TOKEN_RE.findall(text)


def token_id(token: str) -> int:
    """A stable id: vocabulary words, then their spaced forms, the two special tokens, a hash range for the rest."""
    if token == EOS_TOKEN:
        return EOS_ID
    if token == IM_START:
        return EOS_ID + 1
    if token in _VOCAB_INDEX:
        return _VOCAB_INDEX[token]
    if token.startswith(" ") and token[1:] in _VOCAB_INDEX:
        return len(VOCAB) + _VOCAB_INDEX[token[1:]]
    return EOS_ID + 2 + int.from_bytes(hashlib.sha256(token.encode()).digest()[:4], "big") % _OOV_IDS


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message: a string, the text parts of a list, or "" (e.g. a tool-call message)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_tokens(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The tokens of the prompt the chat template renders from `messages` (ChatML, as Qwen's)."""
    tokens: list[str] = []
    for m in messages:
        tokens += [IM_START, str(m.get("role", "")), "\n", *tokenize(message_text(m)), EOS_TOKEN, "\n"]
    return [*tokens, IM_START, "assistant", "\n"]


# --- the model -----------------------------------------------------------------------------------


def initial_state(model: str, messages: Sequence[dict[str, Any]], *, honest: bool = True) -> bytes:
    key = model if honest else model + "\0wrong"
    canonical = json.dumps(list(messages), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(b"sim-lm\0" + key.encode() + b"\0" + canonical.encode()).digest()


def next_state(state: bytes, token: str) -> bytes:
    return hashlib.sha256(state + token.encode()).digest()


def distribution(state: bytes, position: int) -> tuple[tuple[str, float], ...]:
    """The model's most likely next tokens after `state` (at `position` of the answer), highest first.

    _CANDIDATES vocabulary tokens plus the stop token, with logprobs that leave _TAIL_MASS to the rest;
    the first MAX_TOP_LOGPROBS of them are returned.
    """
    stream = hashlib.shake_256(b"dist" + state).digest(4 * _CANDIDATES + 64)
    picked: list[int] = []
    offset = 0
    while len(picked) < _CANDIDATES:
        if offset + 2 > len(stream):
            stream += hashlib.shake_256(b"more" + stream).digest(64)
        index = int.from_bytes(stream[offset : offset + 2], "big") % len(VOCAB)
        offset += 2
        if index not in picked:
            picked.append(index)
    prefix = "" if position == 0 else " "
    logits: list[tuple[str, float]] = []
    logit = 0.0
    for n, index in enumerate(picked):
        if n:
            logit -= 0.15 + stream[-n] / 64  # gaps between neighbours: 0.15 .. 4.1
        logits.append((prefix + VOCAB[index], logit))
    # The stop token: out of reach at the start, as likely as the top token after ~120 tokens, and
    # dominant (but never certain, for `ignore_eos`) from ~150 on.
    logits.append((EOS_TOKEN, -40.0 if position == 0 else min(-12.0 + 0.1 * position, 3.0)))
    top = max(lg for _, lg in logits)
    norm = top + math.log(sum(math.exp(lg - top) for _, lg in logits)) - math.log(1.0 - _TAIL_MASS)
    ranked = sorted(((tok, round(lg - norm, 6)) for tok, lg in logits), key=lambda e: -e[1])
    return tuple(ranked[:MAX_TOP_LOGPROBS])


def tail_logprob(token: str) -> float:
    """The logprob of a token outside the distribution's top: a share of the tail mass, fixed per token."""
    jitter = int.from_bytes(hashlib.sha256(b"tail" + token.encode()).digest()[:2], "big") / 65536
    return round(math.log(_TAIL_MASS / _OOV_IDS) - jitter, 6)


def _logprob_in(top: tuple[tuple[str, float], ...], token: str) -> float:
    for t, lp in top:
        if t == token:
            return lp
    return tail_logprob(token)


def _uniform(seed: int, choice: int, state: bytes) -> float:
    digest = hashlib.sha256(b"sample" + seed.to_bytes(8, "big", signed=True) + choice.to_bytes(4, "big") + state)
    return int.from_bytes(digest.digest()[:8], "big") / 2**64


def _sample(top: tuple[tuple[str, float], ...], u: float, *, temperature: float, allow_eos: bool) -> str:
    candidates = [(t, lp) for t, lp in top if allow_eos or t != EOS_TOKEN]
    if temperature <= 0:
        return candidates[0][0]
    best = candidates[0][1]
    weights = [math.exp((lp - best) / temperature) for _, lp in candidates]
    target = u * sum(weights)
    for (token, _), w in zip(candidates, weights, strict=True):
        target -= w
        if target < 0:
            return token
    return candidates[-1][0]


def generate(
    model: str,
    messages: Sequence[dict[str, Any]],
    *,
    seed: int,
    max_tokens: int,
    temperature: float = 1.0,
    ignore_eos: bool = False,
    choice: int = 0,
    honest: bool = True,
) -> Completion:
    """An answer to `messages`: at most `max_tokens` tokens, the stop token included."""
    state = initial_state(model, messages, honest=honest)
    steps: list[Step] = []
    for position in range(max_tokens):
        top = distribution(state, position)
        allow_eos = position > 0 and not ignore_eos
        token = _sample(top, _uniform(seed, choice, state), temperature=temperature, allow_eos=allow_eos)
        steps.append(Step(token, _logprob_in(top, token), top))
        if token == EOS_TOKEN:
            return Completion(tuple(steps), "stop")
        state = next_state(state, token)
    return Completion(tuple(steps), "length")


def enforce(
    model: str, messages: Sequence[dict[str, Any]], text: str, *, max_tokens: int, honest: bool = True
) -> Completion:
    """The model forced along `text` (vLLM's `enforced_str`): its tokens with the logprobs the model gives them.

    The text's tokens (at most `max_tokens`) are produced in order; if room is left, the stop token follows,
    so the honest answer of `generate` comes back step for step, finish reason included.
    """
    state = initial_state(model, messages, honest=honest)
    tokens = tokenize(text)
    steps: list[Step] = []
    for position, token in enumerate(tokens[:max_tokens]):
        top = distribution(state, position)
        steps.append(Step(token, _logprob_in(top, token), top))
        state = next_state(state, token)
    if len(tokens) >= max_tokens:
        return Completion(tuple(steps), "length")
    top = distribution(state, len(steps))
    steps.append(Step(EOS_TOKEN, _logprob_in(top, EOS_TOKEN), top))
    return Completion(tuple(steps), "stop")
