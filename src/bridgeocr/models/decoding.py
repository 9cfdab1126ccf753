"""Batched greedy and beam search over the GPT with its KV cache, prefilled with the visual prefix.

Finished lines (greedy) and finished items (beam) are dropped from the batch, so their rows cost nothing
afterwards. `use_cache=False` recomputes the full sequence every step: the tests compare it with the cached
path token for token. Confidence = mean log-prob of the generated tokens (EOS included when produced).
Beam scores are sum log-prob / length**length_penalty (length counts EOS), HF's convention; an item stops
once it has `beam` finished hypotheses and its best live beam cannot beat the worst of them at its current
length (HF's `early_stopping=False` heuristic), or at `max_new_tokens`. PAD and BOS are never generated.
A GPT reading a prefix can fall into a loop ("look look look ..."); `model.stop_repeats` ends a line (greedy)
or a beam once its output repeats one unit that many times in a row, keeping the first copy.
"""

from __future__ import annotations

import torch

from bridgeocr.errors import ConfigError
from bridgeocr.models.joint_decoding import draft_first_search, joint_greedy, joint_search
from bridgeocr.models.stepping import Hypothesis, Stepper, log_probs

__all__ = ["Hypothesis", "generate", "search", "greedy_search", "beam_search", "repeat_tail"]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


MAX_REPEAT_UNIT = 16


def repeat_tail(ids: list[int], times: int) -> int:
    """How many tokens to drop when `ids` ends with one unit (2..16 tokens, not all the same token) written
    `times` times in a row: a decoder caught in a loop ("look look look look ...", "ORD_MACORD_MAC...") is
    stopped after the first copy. 0 when it does not (or `times` < 2). Runs of one token ("....", "xxxx")
    never count: they are real text in typewriting and tables of contents."""
    if times < 2:
        return 0
    for unit in range(2, MAX_REPEAT_UNIT + 1):
        if unit * times > len(ids):
            break
        tail = ids[-unit:]
        if len(set(tail)) > 1 and ids[-unit * times:] == tail * times:
            return unit * (times - 1)
    return 0


@torch.no_grad()
def greedy_search(gpt, prefix, prefix_mask, attach_layer: int, bos_id: int, eos_id: int, max_new_tokens: int,
                  use_cache: bool = True, suppress: tuple[int, ...] = (),
                  stop_repeats: int = 0) -> list[tuple[list[int], list[float]]]:
    """-> per item (token ids without EOS, per-token log-probs incl. EOS). `stop_repeats` N > 1: a line whose
    output ends with a unit written N times in a row ends there, with one copy (`repeat_tail`)."""
    B = prefix.shape[0]
    st = Stepper(gpt, prefix, prefix_mask, attach_layer, bos_id, use_cache)
    logits = st.start()
    ids: list[list[int]] = [[] for _ in range(B)]
    lps: list[list[float]] = [[] for _ in range(B)]
    alive = list(range(B))  # row r of the batch is item alive[r]
    for t in range(max_new_tokens):
        lp, tok = log_probs(logits, suppress).max(-1)
        ended = []
        for r, (b, lp_r, tok_r) in enumerate(zip(alive, lp.tolist(), tok.tolist())):  # one device sync per step
            lps[b].append(lp_r)
            if tok_r != eos_id:
                ids[b].append(tok_r)
                drop = repeat_tail(ids[b], stop_repeats)
                if drop:  # a loop: keep its first copy, and the line ends here
                    del ids[b][-drop:], lps[b][-drop:]
                    ended.append(r)
        if ended:
            tok = tok.clone()
            tok[ended] = eos_id
        keep = (tok != eos_id).nonzero().squeeze(1)
        if t == max_new_tokens - 1 or keep.numel() == 0:
            break
        same_rows = keep.numel() == len(alive)  # no line finished: keep the cache as it is
        alive = [alive[i] for i in keep.tolist()]
        logits = st.step(keep, tok[keep], same_rows=same_rows)
    return list(zip(ids, lps))


@torch.no_grad()
def beam_search(gpt, prefix, prefix_mask, attach_layer: int, bos_id: int, eos_id: int, max_new_tokens: int,
                beam: int = 4, length_penalty: float = 1.0, use_cache: bool = True,
                suppress: tuple[int, ...] = (), stop_repeats: int = 0) -> list[tuple[list[int], list[float]]]:
    """-> per item the best hypothesis (ids without EOS, per-token log-probs); `stop_repeats` as in greedy."""
    B, K = prefix.shape[0], beam
    st = Stepper(gpt, prefix, prefix_mask, attach_layer, bos_id, use_cache)
    logits = st.start()
    live = {b: [(0.0, [], [])] for b in range(B)}  # item -> beams (sum log-prob, ids, log-probs); rows in order
    finished: dict[int, list] = {b: [] for b in range(B)}  # item -> (normalised score, ids, log-probs)
    for t in range(max_new_tokens):
        logp = log_probs(logits, suppress)
        V = logp.shape[-1]
        parents, tokens, new_live, row = [], [], {}, 0
        for b, beams in live.items():
            n = len(beams)
            rows_logp = logp[row:row + n].flatten()
            scores = torch.tensor([s for s, _, _ in beams], device=logp.device).repeat_interleave(V) + rows_logp
            vals, idx = scores.topk(min(2 * K, n * V))
            nxt = []
            for rank, (v, i, lp) in enumerate(zip(vals.tolist(), idx.tolist(), rows_logp[idx].tolist())):
                if v == float("-inf"):
                    break
                p, tok = divmod(i, V)
                _, ids, lps = beams[p]
                drop = 0 if tok == eos_id else repeat_tail(ids + [tok], stop_repeats)
                if drop:  # a loop: this beam ends with the loop's first copy
                    if rank < K:
                        kept, kept_lps = (ids + [tok])[:-drop], (lps + [lp])[:-drop]
                        finished[b].append((sum(kept_lps) / max(1, len(kept)) ** length_penalty, kept, kept_lps))
                elif tok == eos_id:
                    if rank < K:
                        finished[b].append((v / (len(ids) + 1) ** length_penalty, ids, lps + [lp]))
                else:
                    nxt.append((v, ids + [tok], lps + [lp], row + p))
                    if len(nxt) == K:
                        break
            row += n
            finished[b] = sorted(finished[b], key=lambda h: h[0], reverse=True)[:K]
            last = t == max_new_tokens - 1
            done = not nxt or (len(finished[b]) >= K and finished[b][-1][0] >= nxt[0][0] / (t + 1) ** length_penalty)
            if last and not done:  # out of length: live beams become hypotheses
                finished[b].extend((v / len(ids) ** length_penalty, ids, lps) for v, ids, lps, _ in nxt)
            elif not done:
                new_live[b] = [(v, ids, lps) for v, ids, lps, _ in nxt]
                parents += [r for *_, r in nxt]
                tokens += [ids[-1] for _, ids, _, _ in nxt]
        if not new_live:
            break
        live = new_live
        dev = logits.device
        logits = st.step(torch.tensor(parents, device=dev), torch.tensor(tokens, device=dev))
    out = []
    for b in range(B):
        best = max(finished[b], key=lambda h: h[0]) if finished[b] else (0.0, [], [])
        out.append((best[1], best[2]))
    return out


@torch.no_grad()
def generate(model, images, image_mask, beam: int = 1, max_new_tokens: int | None = None,
             length_penalty: float = 1.0, use_cache: bool = True, ctc_weight: float = 0.0,
             pre_beam: int | None = None, draft: bool | None = None) -> list[Hypothesis]:
    """OCRModel -> one Hypothesis per image (eval mode for the call; the caller's mode is restored): the model
    encodes the lines (`OCRModel.encode_lines`), a search writes them (`search`), the tokenizer spells them.

    ctc_weight > 0: joint CTC / GPT decoding (`joint_decoding.py`) with the model's CTC head, scoring
    `pre_beam` candidates per hypothesis (None: `model.cfg.joint_pre_beam`; 0: every id); at beam > 1 `draft`
    first (`joint_decoding.draft_first_search`; None: `model.cfg.joint_draft`)."""
    was_training = model.training
    model.eval()
    try:
        if ctc_weight > 0 and model.ctc_head is None:
            raise ConfigError("joint decoding needs the encoder's CTC head (train with model.ctc_head=true)")
        lines = model.encode_lines(images, image_mask, with_ctc=ctc_weight > 0)
        results = search(model, lines, beam, max_new_tokens, length_penalty, use_cache, ctc_weight,
                         model.cfg.joint_pre_beam if pre_beam is None else pre_beam,
                         model.cfg.joint_draft if draft is None else draft)
    finally:
        model.train(was_training)
    tok = model.tokenizer
    return [Hypothesis(ids, tok.decode(ids) if tok is not None else "", _mean(lps)) for ids, lps in results]


def search(model, lines, beam: int, max_new_tokens: int | None, length_penalty: float, use_cache: bool,
           ctc_weight: float, pre_beam: int, draft: bool = True) -> list[tuple[list[int], list[float]]]:
    """The decoder strategy for (beam, ctc_weight, draft): greedy, beam search, joint greedy (draft and check),
    joint beam search draft first, or on every line, over the model's GPT reading `lines` (an EncodedLines)."""
    gpt = model.decoder
    n = min(max_new_tokens or model.cfg.max_text_tokens, gpt.cfg.n_positions)
    args = (gpt, lines.visual, lines.visual_mask, model.cfg.attach_layer, model.bos_id, model.eos_id, n)
    suppress = tuple(sorted({model.pad_id, model.bos_id} - {model.eos_id}))
    if ctc_weight > 0:
        ctc = dict(ctc_log_probs=lines.ctc_log_probs, ctc_lengths=lines.ctc_lengths, ctc_weight=ctc_weight,
                   suppress=suppress, use_cache=use_cache)
        if beam <= 1:  # greedy joint: the CTC head's reading checked by the GPT in parallel
            return joint_greedy(*args, **ctc)
        if draft:  # the beam search only where the checked draft does not hold
            return draft_first_search(*args, beam=beam, pre_beam=pre_beam, **ctc)
        return joint_search(*args, beam=beam, pre_beam=pre_beam, **ctc)
    stop = int(model.cfg.stop_repeats or 0)
    if beam <= 1:
        return greedy_search(*args, use_cache=use_cache, suppress=suppress, stop_repeats=stop)
    return beam_search(*args, beam=beam, length_penalty=length_penalty, use_cache=use_cache, suppress=suppress,
                       stop_repeats=stop)
