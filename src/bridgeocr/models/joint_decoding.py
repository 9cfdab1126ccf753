"""Joint CTC / GPT beam search (hybrid CTC/attention decoding, Watanabe et al. 2017, as in ESPnet).

Every hypothesis is scored by  w * log p_ctc(prefix | frames) + (1 - w) * log p_gpt(prefix | image),
where p_ctc(prefix) is the CTC *prefix* probability: the mass of all frame paths whose labelling starts with
the prefix. The GPT brings the language; the CTC head keeps it on the image: a hypothesis that hallucinates,
loops or stops early gets a vanishing CTC score, so it falls out of the beam.

The prefix probabilities of every vocabulary item come from one matrix product per step, and
the forward variables of the kept hypotheses by two log-space cumulative sums instead of a loop over frames:
r_n(t) = logaddexp(r_n(t-1), phi(t-1)) + x_c(t) unrolls to C(t) + logcumsumexp(phi(s-1) - C(s-1)) with C the
cumulative log-posterior of c (same for the blank recursion), in float64 so the differences stay exact.
"""

from __future__ import annotations

import torch

from bridgeocr.models.decoding import _log_probs, _Stepper

NEG_INF = float("-inf")


class CTCPrefixScorer:
    """CTC prefix scores over one batch of frame posteriors (blank = id 0).

    State of a hypothesis: r [T, 2] (log-prob of its labelling ending at frame t in a label / in a blank),
    its last label and its length. Rows of r are grouped by item, in item order (as the beam keeps them)."""

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0):
        B, T, _ = log_probs.shape
        self.frames = torch.arange(T, device=log_probs.device)
        valid = self.frames[None, :] < lengths[:, None]  # [B, T]
        self.logp = log_probs.double().masked_fill(~valid[:, :, None], 0.0)  # padded frames: log 1, after the end
        self.prob = self.logp.exp().masked_fill(~valid[:, :, None], 0.0)  # ... and never summed over in psi
        self.valid, self.lengths, self.blank = valid, lengths, blank

    def initial(self) -> torch.Tensor:
        """r of the empty prefix for each item: [B, T, 2] (only blanks so far)."""
        r = torch.full((*self.logp.shape[:2], 2), NEG_INF, dtype=self.logp.dtype, device=self.logp.device)
        r[..., 1] = self.logp[..., self.blank].cumsum(1)
        return r

    def _column(self, items: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log-posterior of labels[i] at every frame of item items[i]: [R, T]."""
        return self.logp[items[:, None], self.frames[None, :], labels[:, None]]

    @staticmethod
    def _shift(x: torch.Tensor, first: float) -> torch.Tensor:
        """x(t-1) for t = 0..T-1, with `first` before frame 0."""
        return torch.cat([torch.full_like(x[:, :1], first), x[:, :-1]], dim=1)

    def _phi(self, r: torch.Tensor, length: int) -> torch.Tensor:
        """Log-prob that the prefix is complete by frame t-1, for t = 0..T-1: [R, T] (a new, different label
        may start at frame t). Before frame 0 only the empty prefix is complete."""
        return self._shift(torch.logaddexp(r[..., 0], r[..., 1]), 0.0 if length == 0 else NEG_INF)

    def scores(self, r: torch.Tensor, items: torch.Tensor, length: int, last: torch.Tensor,
               eos_id: int) -> torch.Tensor:
        """Prefix log-probs of every one-label extension: [R, V] (EOS: the whole labelling's probability).

        psi(c) = log sum_t exp(phi(t-1)) p_t(c): one batched matrix product per item over its rows."""
        phi = self._phi(r, length)
        top = phi.max(1, keepdim=True).values.clamp(min=-1e30)
        weights = (phi - top).exp()  # [R, T]
        groups, counts = torch.unique_consecutive(items, return_counts=True)
        group = torch.repeat_interleave(torch.arange(len(groups), device=items.device), counts)
        first = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(items), device=items.device) - first[group]
        padded = weights.new_zeros(len(groups), int(counts.max()), weights.shape[1])
        padded[group, pos] = weights
        mass = torch.bmm(padded, self.prob[groups])[group, pos]  # [R, V]
        psi = mass.log() + top
        if length > 0:  # repeating the last label needs a blank in between: only paths now in a blank
            rb = self._shift(r[..., 1], NEG_INF)
            x_last = self._column(items, last).masked_fill(~self.valid[items], NEG_INF)
            psi = psi.scatter(1, last[:, None], torch.logsumexp(rb + x_last, dim=1)[:, None])
        end = (self.lengths[items] - 1).clamp(min=0)
        r_end = r.gather(1, end[:, None, None].expand(-1, 1, 2)).squeeze(1)
        psi[:, eos_id] = torch.logaddexp(r_end[:, 0], r_end[:, 1])
        psi[:, self.blank] = NEG_INF
        return psi

    def extend(self, r: torch.Tensor, items: torch.Tensor, length: int, last: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
        """r of each hypothesis extended by labels[i] (rows of r already follow their parents): [R, T, 2]."""
        xc = self._column(items, labels)
        xb = self.logp[items, :, self.blank]
        phi = self._phi(r, length)
        if length > 0:
            phi = torch.where((labels == last)[:, None], self._shift(r[..., 1], NEG_INF), phi)
        c = xc.cumsum(1)
        r_n = c + torch.logcumsumexp(phi - self._shift(c, 0.0), dim=1)
        d = xb.cumsum(1)
        r_b = d + torch.logcumsumexp(self._shift(r_n, NEG_INF) - self._shift(d, 0.0), dim=1)
        return torch.stack([r_n, r_b], dim=-1)


@torch.no_grad()
def joint_search(gpt, prefix, prefix_mask, attach_layer: int, bos_id: int, eos_id: int, max_new_tokens: int,
                 ctc_log_probs: torch.Tensor, ctc_lengths: torch.Tensor, ctc_weight: float = 0.5, beam: int = 4,
                 use_cache: bool = True, suppress: tuple[int, ...] = ()) -> list[tuple[list[int], list[float]]]:
    """-> per item the best hypothesis (ids without EOS, the GPT's per-token log-probs incl. EOS).

    All live hypotheses have the same length at a step, so scores compare without length normalisation;
    an item stops once its best finished hypothesis beats every live one (scores only fall as a
    hypothesis grows)."""
    B, K, w = prefix.shape[0], beam, ctc_weight
    scorer = CTCPrefixScorer(ctc_log_probs, ctc_lengths)
    st = _Stepper(gpt, prefix, prefix_mask, attach_layer, bos_id, use_cache)
    logits = st.start()
    dev = logits.device
    # per item: live beams (joint score, GPT log-prob sum, ids, GPT log-probs per token); rows in item order
    live = {b: [(0.0, 0.0, [], [])] for b in range(B)}
    r = scorer.initial()
    finished: dict[int, list] = {b: [] for b in range(B)}
    items = torch.arange(B, device=dev)  # the item of each row
    for t in range(max_new_tokens):
        last = torch.tensor([ids[-1] if ids else 0 for beams in live.values() for _, _, ids, _ in beams], device=dev)
        gpt_lp = _log_probs(logits, suppress).double()  # [R, V]
        V = gpt_lp.shape[-1]
        psi = scorer.scores(r, items, t, last, eos_id)
        if psi.shape[1] < V:  # a GPT vocabulary wider than the tokenizer's: ids the CTC head never emits
            psi = torch.cat([psi, psi.new_full((psi.shape[0], V - psi.shape[1]), NEG_INF)], dim=1)
        gpt_sum = torch.tensor([g for beams in live.values() for _, g, _, _ in beams], device=dev,
                               dtype=torch.float64)
        joint = w * psi + (1 - w) * (gpt_sum[:, None] + gpt_lp)
        for tok in suppress:
            joint[:, tok] = NEG_INF
        parents, labels, new_live, row = [], [], {}, 0
        for b, beams in live.items():
            n = len(beams)
            vals, idx = joint[row:row + n].flatten().topk(min(2 * K, n * V))
            nxt = []
            for v, i in zip(vals.tolist(), idx.tolist()):
                if v == NEG_INF:
                    break
                p, tok = divmod(i, V)
                _, g, ids, lps = beams[p]
                lp = gpt_lp[row + p, tok].item()
                if tok == eos_id:
                    finished[b].append((v, ids, lps + [lp]))
                else:
                    nxt.append((v, g + lp, ids + [tok], lps + [lp], row + p))
                    if len(nxt) == K:
                        break
            row += n
            best_done = max((h[0] for h in finished[b]), default=NEG_INF)
            if t == max_new_tokens - 1:  # out of length: live beams count as they are
                finished[b].extend((v, ids, lps) for v, _, ids, lps, _ in nxt)
            elif nxt and nxt[0][0] > best_done:
                new_live[b] = [h[:4] for h in nxt]
                parents += [h[4] for h in nxt]
                labels += [h[2][-1] for h in nxt]
        if not new_live:
            break
        live = new_live
        parents_t, labels_t = torch.tensor(parents, device=dev), torch.tensor(labels, device=dev)
        items = torch.tensor([b for b, beams in live.items() for _ in beams], device=dev)
        r = scorer.extend(r[parents_t], items, t, last[parents_t], labels_t)
        logits = st.step(parents_t, labels_t)
    out = []
    for b in range(B):
        best = max(finished[b], key=lambda h: h[0]) if finished[b] else (0.0, [], [])
        out.append((best[1], best[2]))
    return out
