"""Joint CTC / GPT beam search (hybrid CTC/attention decoding, Watanabe et al. 2017, as in ESPnet).

Every hypothesis is scored by  w * log p_ctc(prefix | frames) + (1 - w) * log p_gpt(prefix | image),
where p_ctc(prefix) is the CTC *prefix* probability: the mass of all frame paths whose labelling starts with
the prefix. The GPT brings the language; the CTC head keeps it on the image: a hypothesis that hallucinates,
loops or stops early gets a vanishing CTC score, so it falls out of the beam.

The prefix probabilities of every vocabulary item come from one matrix product per step, and
the forward variables of the kept hypotheses by two log-space cumulative sums instead of a loop over frames:
r_n(t) = logaddexp(r_n(t-1), phi(t-1)) + x_c(t) unrolls to C(t) + logcumsumexp(phi(s-1) - C(s-1)) with C the
cumulative log-posterior of c (same for the blank recursion), in float64 so the differences stay exact.

Two ways to pay less (docs/benchmarks.md, "Decoding speed"): partial scoring (`pre_beam`: only the GPT's best
ids get a CTC score, ESPnet's pre-beam), and at beam 1 `joint_greedy`, which checks the CTC head's own reading
with one parallel GPT pass instead of stepping the GPT token by token, for the same result.
"""

from __future__ import annotations

import torch

from bridgeocr.models.stepping import Stepper, log_probs

NEG_INF = float("-inf")


class CTCPrefixScorer:
    """CTC prefix scores over one batch of frame posteriors (blank = id 0).

    State of a hypothesis: r [T, 2] (log-prob of its labelling ending at frame t in a label / in a blank),
    its last label and its length. Rows of r are grouped by item, in item order (as the beam keeps them)."""

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0):
        B, T, _ = log_probs.shape
        self.frames = torch.arange(T, device=log_probs.device)
        self.every_item = torch.arange(B, device=log_probs.device)  # rows = items, in order (joint_greedy)
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

    def scores(self, r: torch.Tensor, items: torch.Tensor, length: int, last: torch.Tensor, eos_id: int,
               cands: torch.Tensor | None = None) -> torch.Tensor:
        """Prefix log-probs of one-label extensions (EOS: the whole labelling's probability): of every
        vocabulary item [R, V], or of `cands` [R, P] only (partial scoring: the work is R x T x P, not x V).

        psi(c) = log sum_t exp(phi(t-1)) p_t(c): a batched matrix product per item over its rows."""
        phi = self._phi(r, length)
        top = phi.max(1, keepdim=True).values.clamp(min=-1e30)
        weights = (phi - top).exp()  # [R, T]
        if cands is None and len(items) == len(self.every_item) and torch.equal(items, self.every_item):
            # one row per item, in order (joint_greedy): no grouping needed
            mass = torch.bmm(weights[:, None, :], self.prob).squeeze(1)
        elif cands is None:
            groups, counts = torch.unique_consecutive(items, return_counts=True)
            group = torch.repeat_interleave(torch.arange(len(groups), device=items.device), counts)
            first = torch.cumsum(counts, 0) - counts
            pos = torch.arange(len(items), device=items.device) - first[group]
            padded = weights.new_zeros(len(groups), int(counts.max()), weights.shape[1])
            padded[group, pos] = weights
            mass = torch.bmm(padded, self.prob[groups])[group, pos]  # [R, V]
        else:
            known = cands < self.prob.shape[-1]  # ids the CTC head has no class for: probability 0
            columns = self.prob[items[:, None], :, cands.masked_fill(~known, 0)]  # [R, P, T]
            mass = (columns @ weights[:, :, None]).squeeze(-1).masked_fill(~known, 0.0)
        psi = mass.log() + top
        if length > 0:  # repeating the last label needs a blank in between: only paths now in a blank
            rb = self._shift(r[..., 1], NEG_INF)
            x_last = self._column(items, last).masked_fill(~self.valid[items], NEG_INF)
            repeat = torch.logsumexp(rb + x_last, dim=1)
            psi = (psi.scatter(1, last[:, None], repeat[:, None]) if cands is None
                   else torch.where(cands == last[:, None], repeat[:, None], psi))
        end = (self.lengths[items] - 1).clamp(min=0)
        r_end = r.gather(1, end[:, None, None].expand(-1, 1, 2)).squeeze(1)
        whole = torch.logaddexp(r_end[:, 0], r_end[:, 1])
        if cands is None:
            psi[:, eos_id] = whole
            psi[:, self.blank] = NEG_INF
            return psi
        psi = torch.where(cands == eos_id, whole[:, None], psi)
        return psi.masked_fill(cands == self.blank, NEG_INF)

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


def candidates(gpt_lp: torch.Tensor, pre_beam: int, eos_id: int) -> torch.Tensor | None:
    """The ids whose CTC prefix score is computed at a step (ESPnet's partial scoring): each row's
    `pre_beam` best by the GPT, and EOS (so that a line can always end where the CTC head says it does).
    None (score every id) when pre_beam is 0 or covers the vocabulary. A repeated EOS column is moved to an
    id the GPT rules out, so that no hypothesis is counted twice."""
    V = gpt_lp.shape[-1]
    if pre_beam <= 0 or pre_beam + 1 >= V:
        return None
    top = gpt_lp.topk(pre_beam, dim=-1).indices
    eos = torch.full_like(top[:, :1], eos_id)
    eos = torch.where((top == eos_id).any(1, keepdim=True), gpt_lp.argmin(-1, keepdim=True), eos)
    return torch.cat([top, eos], dim=1)


@torch.no_grad()
def joint_search(gpt, prefix, prefix_mask, attach_layer: int, bos_id: int, eos_id: int, max_new_tokens: int,
                 ctc_log_probs: torch.Tensor, ctc_lengths: torch.Tensor, ctc_weight: float = 0.5, beam: int = 4,
                 use_cache: bool = True, suppress: tuple[int, ...] = (),
                 pre_beam: int = 0) -> list[tuple[list[int], list[float]]]:
    """-> per item the best hypothesis (ids without EOS, the GPT's per-token log-probs incl. EOS).

    All live hypotheses have the same length at a step, so scores compare without length normalisation;
    an item stops once its best finished hypothesis beats every live one (scores only fall as a
    hypothesis grows). `pre_beam` P > 0: only each hypothesis' P best ids by the GPT (+ EOS) are scored
    by the CTC head and can extend it (`candidates`); 0 scores the whole vocabulary (exact search)."""
    B = prefix.shape[0]
    scorer = CTCPrefixScorer(ctc_log_probs, ctc_lengths)
    st = Stepper(gpt, prefix, prefix_mask, attach_layer, bos_id, use_cache)
    logits = st.start()
    dev = logits.device
    # per item: live beams (joint score, GPT log-prob sum, ids, GPT log-probs per token); rows in item order
    live = {b: [(0.0, 0.0, [], [])] for b in range(B)}
    r = scorer.initial()
    finished: dict[int, list] = {b: [] for b in range(B)}
    items = torch.arange(B, device=dev)  # the item of each row
    for t in range(max_new_tokens):
        last = torch.tensor([ids[-1] if ids else 0 for beams in live.values() for _, _, ids, _ in beams], device=dev)
        gpt_lp = log_probs(logits, suppress).double()  # [R, V]; suppressed ids are -inf
        joint, cands = _joint_scores(scorer, r, items, t, last, gpt_lp, live, ctc_weight, pre_beam, eos_id)
        live, parents, labels = _advance(live, finished, joint, cands, gpt_lp, beam, eos_id,
                                         last_step=t == max_new_tokens - 1)
        if not live:
            break
        parents_t, labels_t = torch.tensor(parents, device=dev), torch.tensor(labels, device=dev)
        items = torch.tensor([b for b, beams in live.items() for _ in beams], device=dev)
        r = scorer.extend(r[parents_t], items, t, last[parents_t], labels_t)
        logits = st.step(parents_t, labels_t)
    best = [max(finished[b], key=lambda h: h[0]) if finished[b] else (0.0, [], []) for b in range(B)]
    return [(ids, lps) for _, ids, lps in best]


def _joint_scores(scorer, r, items, t, last, gpt_lp, live, w, pre_beam, eos_id):
    """-> (joint scores [R, P], the id of each column [R, P]) of every row's candidate extensions:
    w * CTC prefix log-prob + (1 - w) * the GPT's log-prob of the whole hypothesis."""
    dev, V = gpt_lp.device, gpt_lp.shape[-1]
    cands = candidates(gpt_lp, pre_beam, eos_id)
    psi = scorer.scores(r, items, t, last, eos_id, cands)
    if cands is None:
        cands = torch.arange(V, device=dev).expand(len(items), V)
        if psi.shape[1] < V:  # a GPT vocabulary wider than the tokenizer's: ids the CTC head never emits
            psi = torch.cat([psi, psi.new_full((psi.shape[0], V - psi.shape[1]), NEG_INF)], dim=1)
    gpt_sum = torch.tensor([g for beams in live.values() for _, g, _, _ in beams], device=dev, dtype=torch.float64)
    return w * psi + (1 - w) * (gpt_sum[:, None] + gpt_lp.gather(1, cands)), cands


def _advance(live, finished, joint, cands, gpt_lp, K: int, eos_id: int, last_step: bool):
    """One step of every item's beam: its K best extensions live on, EOS among the best 2K finishes a
    hypothesis; an item whose best finished hypothesis beats its best live one stops (appends to `finished`).
    -> (the new live beams, each new row's parent row, each new row's last id)."""
    P = cands.shape[1]
    parents, labels, new_live, row = [], [], {}, 0
    for b, beams in live.items():
        n = len(beams)
        vals, idx = joint[row:row + n].flatten().topk(min(2 * K, n * P))
        toks = cands[row:row + n].flatten()[idx].tolist()
        nxt = []
        for v, i, tok in zip(vals.tolist(), idx.tolist(), toks):
            if v == NEG_INF:
                break
            p = i // P
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
        if last_step:  # out of length: live beams count as they are
            finished[b].extend((v, ids, lps) for v, _, ids, lps, _ in nxt)
        elif nxt and nxt[0][0] > best_done:
            new_live[b] = [h[:4] for h in nxt]
            parents += [h[4] for h in nxt]
            labels += [h[2][-1] for h in nxt]
    return new_live, parents, labels


def _ctc_best_path(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Each line's most likely CTC frame labels (its valid frames only)."""
    best = log_probs.argmax(-1).tolist()
    return [row[:n] for row, n in zip(best, lengths.tolist())]


def _collapse(path: list[int], skip: set[int], after: int | None = None) -> list[int]:
    """Labels of a frame path (repeats merged, `skip` ids dropped); `after`: the run of this label the path
    starts in belongs to the prefix already written and is left out."""
    out, prev = [], after
    for p in path:
        if p != prev and p not in skip:
            out.append(p)
        prev = p
    return out


@torch.no_grad()
def joint_greedy(gpt, prefix, prefix_mask, attach_layer: int, bos_id: int, eos_id: int, max_new_tokens: int,
                 ctc_log_probs: torch.Tensor, ctc_lengths: torch.Tensor, ctc_weight: float = 0.5,
                 suppress: tuple[int, ...] = (), rounds: int = 8, use_cache: bool = True,
                 fallback_beam: int = 1, pre_beam: int = 0) -> list[tuple[list[int], list[float]]]:
    """Greedy joint CTC / GPT decoding, the result of `joint_search(beam=1)`, at a fraction of its cost.

    Why: stepping the GPT one token at a time is what joint decoding pays for, and the CTC head's own
    reading is nearly always what the joint score picks. So the CTC head's reading is a *draft* that the GPT
    checks in one parallel pass over all lines (speculative decoding with the CTC head as the draft model):
    walking the draft, each position's joint argmax is computed exactly as the stepwise search does; a line
    keeps its draft up to the first position where the argmax differs, takes the argmax there, and gets a
    new draft for the rest (the CTC head's best path after the frame where its prefix most likely ends).
    Lines still open after `rounds` checks are finished by the stepwise search. Drafts only decide how
    much work is done, never the result.

    `fallback_beam` K > 1 (with `rounds=1`): the *draft-first beam search* (`draft_first_search`): lines
    whose draft the joint score accepts whole in the first check keep it, the others get the beam-K search
    (`joint_search`, scoring `pre_beam` candidates)."""
    B, dev = prefix.shape[0], prefix.device
    scorer = CTCPrefixScorer(ctc_log_probs, ctc_lengths)
    paths = _ctc_best_path(ctc_log_probs, ctc_lengths)
    skip = {scorer.blank, bos_id, eos_id, *suppress}
    state = _Walk([_collapse(p, skip) for p in paths], scorer.initial(), torch.zeros(B, dtype=torch.long, device=dev))
    for _ in range(rounds):
        todo = [b for b in range(B) if not state.done[b]]
        if not todo:
            break
        seqs = [(state.accepted[b] + state.drafts[b])[:max_new_tokens] for b in todo]
        L = min(max(len(s) for s in seqs), max_new_tokens - 1) + 1  # BOS + the tokens whose successor is scored
        ids = torch.full((len(todo), L), bos_id, dtype=torch.long, device=dev)
        text_mask = torch.zeros(len(todo), L, dtype=torch.bool, device=dev)
        for k, seq in enumerate(seqs):
            ids[k, 1:min(len(seq), L - 1) + 1] = torch.tensor(seq[:L - 1], dtype=torch.long, device=dev)
            text_mask[k, :min(len(seq), L - 1) + 1] = True
        rows = torch.tensor(todo, device=dev)
        logits, _ = gpt(ids, attention_mask=text_mask, prefix=prefix[rows], prefix_mask=prefix_mask[rows],
                        attach_layer=attach_layer)
        gpt_lp = log_probs(logits, suppress).double()  # [n, L, V]: position j scores the j-th token
        sub = CTCPrefixScorer(ctc_log_probs[rows], ctc_lengths[rows])  # one row per line being checked
        state.walk(sub, gpt_lp, todo, seqs, paths, skip, ctc_weight, eos_id, max_new_tokens)
    rest = [b for b in range(B) if not state.done[b]]
    if rest:  # lines whose drafts kept missing: the stepwise search, from the start
        idx = torch.tensor(rest, device=dev)
        out = joint_search(gpt, prefix[idx], prefix_mask[idx], attach_layer, bos_id, eos_id, max_new_tokens,
                           ctc_log_probs[idx], ctc_lengths[idx], ctc_weight=ctc_weight, beam=fallback_beam,
                           use_cache=use_cache, suppress=suppress, pre_beam=pre_beam)
        for b, (ids_b, lps_b) in zip(rest, out):
            state.accepted[b], state.lps[b] = ids_b, lps_b
    return list(zip(state.accepted, state.lps))


def draft_first_search(gpt, prefix, prefix_mask, attach_layer: int, bos_id: int, eos_id: int,
                       max_new_tokens: int, ctc_log_probs: torch.Tensor, ctc_lengths: torch.Tensor,
                       ctc_weight: float = 0.5, beam: int = 4, use_cache: bool = True,
                       suppress: tuple[int, ...] = (), pre_beam: int = 0) -> list[tuple[list[int], list[float]]]:
    """Joint beam-K decoding that searches only the lines that need it.

    Why: on print and typewriting 90-95 % of lines are read whole by the CTC head's draft, checked once by the
    GPT in one parallel pass, and the beam search then nearly always returns that same reading; it pays
    for the lines where the two models disagree (docs/benchmarks.md, "Draft first"). So every line's draft
    is checked once (`joint_greedy`, one round); a line the joint argmax follows to its end keeps it; every
    other line gets `joint_search` at `beam` from the start. On a line read whole the result can differ from
    the full search's only where the beam would have left a path both models agree on at every step."""
    return joint_greedy(gpt, prefix, prefix_mask, attach_layer, bos_id, eos_id, max_new_tokens, ctc_log_probs,
                        ctc_lengths, ctc_weight=ctc_weight, suppress=suppress, rounds=1, use_cache=use_cache,
                        fallback_beam=beam, pre_beam=pre_beam)


class _Walk:
    """joint_greedy's lines between checks: what each has written (ids, GPT log-probs, its CTC state r and
    last id at that point), whether it has ended, and its current draft."""

    def __init__(self, drafts: list[list[int]], r: torch.Tensor, last: torch.Tensor):
        B = len(drafts)
        self.drafts, self.r, self.last = drafts, r, last
        self.accepted: list[list[int]] = [[] for _ in range(B)]
        self.lps: list[list[float]] = [[] for _ in range(B)]
        self.done = [False] * B

    def walk(self, scorer, gpt_lp, todo, seqs, paths, skip, w, eos_id, max_new_tokens) -> None:
        """Walk the lines `todo` on from what they have written, along their drafts, all at once, with the
        joint score of the stepwise search; row k stops at its first decision off its draft (another id, EOS,
        or the length limit), its CTC state then that of its prefix + the id it chose."""
        n, L, V = gpt_lp.shape
        dev = gpt_lp.device
        rows, idx = torch.arange(n, device=dev), torch.tensor(todo, device=dev)
        start = torch.tensor([len(self.accepted[b]) for b in todo], device=dev)
        draft = torch.full((n, L + 1), -1, dtype=torch.long, device=dev)  # -1 after a draft's end: never chosen
        for k, seq in enumerate(seqs):
            draft[k, :min(len(seq), L)] = torch.tensor(seq[:L], dtype=torch.long, device=dev)
        r, last = self.r[idx], self.last[idx]
        alive = torch.ones(n, dtype=torch.bool, device=dev)
        picked: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # per step: (made here, id, log-prob)
        first = int(start.min()) == 0  # only a line's first check starts from the empty prefix (all together)
        for step in range(L - int(start.min())):
            pos = (start + step).clamp(max=L - 1)
            psi = scorer.scores(r, rows, step if first else step + 1, last, eos_id)
            if psi.shape[1] < V:
                psi = torch.cat([psi, psi.new_full((n, V - psi.shape[1]), NEG_INF)], dim=1)
            lp_all = gpt_lp[rows, pos]
            tok = (w * psi + (1 - w) * lp_all).argmax(-1)  # the GPT's sum so far: the same for every id
            lp = lp_all.gather(1, tok[:, None]).squeeze(1)
            picked.append((alive, tok, lp))
            stop = alive & ((tok != draft[rows, pos]) | (tok == eos_id) | (pos + 1 >= max_new_tokens))
            grow = alive & (tok != eos_id)
            r = torch.where(grow[:, None, None], scorer.extend(r, rows, step if first else step + 1, last, tok), r)
            last = torch.where(grow, tok, last)
            alive = alive & ~stop
            if not bool(alive.any()):
                break
        self.r[idx], self.last[idx] = r, last
        made = torch.stack([a for a, _, _ in picked], 1).tolist()
        toks = torch.stack([t for _, t, _ in picked], 1).tolist()
        lps = torch.stack([x for _, _, x in picked], 1).tolist()
        for k, b in enumerate(todo):
            for here, tok, lp in zip(made[k], toks[k], lps[k]):
                if not here:
                    break
                self.lps[b].append(lp)
                if tok == eos_id:
                    self.done[b] = True
                    break
                self.accepted[b].append(tok)
            if not self.done[b] and len(self.accepted[b]) >= max_new_tokens:  # out of length: ends as it is
                self.done[b] = True
            if not self.done[b]:  # off its draft: the CTC head's reading from where its prefix ends
                t_end = int(r[k, :, 0].argmax())
                self.drafts[b] = _collapse(paths[b][t_end + 1:], skip, after=self.accepted[b][-1])
