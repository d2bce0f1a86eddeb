//! Work planning for paged attention: one item per (sequence, KV head, tile of queries), and when
//! a call is all decodes, or has too few items for the threads, one task per thread instead: the
//! items' keys laid end to end and cut into equal shares on block boundaries, an item cut in two
//! leaving partial softmax states that are merged afterwards (flash-decoding).

use super::{exp_nonpositive, AttentionShape, SeqAttention};
use crate::kv_cache::KvGeometry;

/// Queries per work item.
pub(super) const QUERY_TILE: usize = 16;
/// A call with prefill chunks and fewer items than this many per thread is cut into one task per
/// thread (a call of decodes only always is).
const ITEMS_PER_THREAD: usize = 4;
/// Smallest share of a task (keys × queries): shorter calls get fewer tasks.
const MIN_TASK_WORK: usize = 128;

/// One unit of work. `split` is `Some(slot)` when the item covers part of its queries' keys and
/// leaves its partial softmax state in `slot` of the partials buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Item {
    pub seq: usize,
    pub kv_head: usize,
    pub queries: (usize, usize),
    pub keys: (usize, usize),
    pub split: Option<usize>,
}

/// A split item's partial state: rows × head_dim unnormalized outputs, then the rows' maxima,
/// then their sums.
pub(super) fn partial_len(rows: usize, head_dim: usize) -> usize {
    rows * (head_dim + 2)
}

#[derive(Default)]
pub(super) struct Plan {
    pub items: Vec<Item>,
    /// (the unsplit item, range of its parts in `items`).
    pub splits: Vec<(Item, std::ops::Range<usize>)>,
    pub partials: Vec<f32>,
    /// Ranges of `items` that each run as one pool task; empty when every item is its own task.
    pub tasks: Vec<std::ops::Range<usize>>,
    /// The whole items while [`cut_into_tasks`] cuts them (kept for its allocation: `items` and
    /// this swap buffers, so a step's planning allocates nothing once warm).
    whole: Vec<Item>,
}

/// Fills `plan` with one item per (sequence, KV head, query tile), or with one task per thread
/// (see [`cut_into_tasks`]) when every item is a single decoding query or there are too few items
/// for the threads.
pub(super) fn plan_items(
    plan: &mut Plan,
    seqs: &[SeqAttention<'_>],
    g: KvGeometry,
    threads: usize,
) {
    plan.items.clear();
    plan.splits.clear();
    plan.tasks.clear();
    for (s, seq) in seqs.iter().enumerate() {
        assert!(
            seq.num_queries <= seq.context_len,
            "invariant: queries are part of the context"
        );
        assert!(
            seq.block_table.len() * g.block_size >= seq.context_len,
            "invariant: block table covers the context"
        );
        let first_pos = seq.context_len - seq.num_queries;
        for kv_head in 0..g.num_kv_heads {
            for t0 in (0..seq.num_queries).step_by(QUERY_TILE) {
                let t1 = (t0 + QUERY_TILE).min(seq.num_queries);
                plan.items.push(Item {
                    seq: s,
                    kv_head,
                    queries: (t0, t1),
                    keys: (0, first_pos + t1),
                    split: None,
                });
            }
        }
    }
    let decodes_only = plan.items.iter().all(|it| it.queries.1 - it.queries.0 == 1);
    if threads <= 1 || (!decodes_only && plan.items.len() >= threads * ITEMS_PER_THREAD) {
        return;
    }
    cut_into_tasks(plan, g.block_size, threads);
}

/// Replaces `plan`'s whole items by one task per thread of near-equal work (keys × queries): the
/// items' key ranges laid end to end and cut at block boundaries, so a task is a run of item
/// parts and at most `threads - 1` items are split.
///
/// Measured on the 135M shape (3 KV heads, 2 threads, one sequence decoding at 600 tokens of
/// context): 4 parts in 2 tasks and 1 merge instead of 6 items of ≈ 300 keys and 3 merges took
/// 13% less time per call with K/V from memory, 7% in cache (`attention_speed`); decode steps
/// 2% less (steps alternating between the two plans). Batches of 3 to 48 decoding sequences
/// (9 to 144 items, each claimed by a read-modify-write the two cores pass back and forth):
/// 2–8% less from memory, 3–18% in cache, as two tasks; a decode step of 16 sequences (135M
/// Q8_0, prompts of 128) 3% less (steps alternating between the two rules, 16 windows).
///
/// Prefill chunks keep one task per item: their items are large and unequal (causal), and the
/// kernel pool's claims balance them as they go.
fn cut_into_tasks(plan: &mut Plan, block_size: usize, threads: usize) {
    std::mem::swap(&mut plan.items, &mut plan.whole);
    let Plan {
        items,
        splits,
        tasks,
        whole,
        ..
    } = plan;
    items.clear();
    let whole = &*whole;
    let rows = |it: &Item| it.queries.1 - it.queries.0;
    let work = |it: &Item| it.keys.1 * rows(it);
    let total: usize = whole.iter().map(work).sum();
    let n_tasks = threads.min(total / MIN_TASK_WORK).max(1);
    // Where task t starts: (item, key), the key rounded to the nearest block boundary.
    let start_of = |t: usize| -> (usize, usize) {
        let mut pos = t * total / n_tasks;
        for (i, it) in whole.iter().enumerate() {
            if pos < work(it) {
                let key = (pos / rows(it) + block_size / 2) / block_size * block_size;
                return if key < it.keys.1 {
                    (i, key)
                } else {
                    (i + 1, 0)
                };
            }
            pos -= work(it);
        }
        (whole.len(), 0)
    };
    let mut from = (0, 0);
    for t in 0..n_tasks {
        let to = if t + 1 == n_tasks {
            (whole.len(), 0)
        } else {
            start_of(t + 1)
        };
        let first = items.len();
        for (i, item) in whole.iter().enumerate().take(to.0 + 1).skip(from.0) {
            let lo = if i == from.0 { from.1 } else { 0 };
            let hi = if i == to.0 { to.1 } else { item.keys.1 };
            if hi > lo {
                items.push(Item {
                    keys: (lo, hi),
                    ..*item
                });
            }
        }
        if items.len() > first {
            tasks.push(first..items.len());
        }
        from = to;
    }
    // Parts of one item are adjacent: an item in more than one part leaves partial states.
    let mut slot = 0;
    let mut i = 0;
    while i < items.len() {
        let it = items[i];
        let same = |p: &Item| (p.seq, p.kv_head, p.queries) == (it.seq, it.kv_head, it.queries);
        let end = i + items[i..].iter().take_while(|p| same(p)).count();
        if end - i > 1 {
            for part in &mut items[i..end] {
                part.split = Some(slot);
                slot += 1;
            }
            splits.push((
                Item {
                    keys: (0, items[end - 1].keys.1),
                    ..it
                },
                i..end,
            ));
        }
        i = end;
    }
}

/// Merges the partial softmax states of one split item into its output rows.
pub(super) fn combine(
    item: &Item,
    seq: &SeqAttention<'_>,
    parts: &[Item],
    partials: &[f32],
    width: usize,
    shape: &AttentionShape,
    out: &mut [f32],
) {
    let hd = shape.geometry.head_dim;
    let group = shape.num_heads / shape.geometry.num_kv_heads;
    let rows = (item.queries.1 - item.queries.0) * group;
    let out_stride = shape.num_heads * hd;
    let state = |p: &Item| {
        let slot = p.split.expect("invariant: split parts have slots");
        &partials[slot * width..slot * width + partial_len(rows, hd)]
    };
    for r in 0..rows {
        let max = parts
            .iter()
            .map(|p| state(p)[rows * hd + r])
            .fold(f32::NEG_INFINITY, f32::max);
        let (t, gi) = (r / group, r % group);
        let row = seq.query_start + item.queries.0 + t;
        let h = item.kv_head * group + gi;
        let dst = &mut out[row * out_stride + h * hd..][..hd];
        dst.fill(0.0);
        let mut sum = 0f32;
        for p in parts {
            let buf = state(p);
            let (m, s) = (buf[rows * hd + r], buf[rows * hd + rows + r]);
            if s == 0.0 {
                continue;
            }
            let w = exp_nonpositive(m - max);
            sum += s * w;
            for (d, x) in dst.iter_mut().zip(&buf[r * hd..(r + 1) * hd]) {
                *d += x * w;
            }
        }
        let inv = 1.0 / sum;
        dst.iter_mut().for_each(|d| *d *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of 16 tokens, head_dim 64.
    fn geometry(num_kv_heads: usize, num_blocks: usize) -> KvGeometry {
        KvGeometry {
            block_size: 16,
            num_blocks,
            num_kv_heads,
            head_dim: 64,
        }
    }

    fn decode_plan(kv_heads: usize, context: usize, threads: usize) -> Plan {
        let g = geometry(kv_heads, 64);
        let table: Vec<u32> = (0..context.div_ceil(16) as u32).collect();
        let seq = SeqAttention {
            query_start: 0,
            num_queries: 1,
            context_len: context,
            block_table: &table,
        };
        let mut plan = Plan::default();
        plan_items(&mut plan, &[seq], g, threads);
        plan
    }

    /// Every whole item's keys are covered once, in order, by block-aligned parts; split items
    /// have one slot per part; tasks are consecutive runs of parts covering every item. `seqs`
    /// are (context, queries).
    fn assert_covers(plan: &Plan, seqs: &[(usize, usize)], kv_heads: usize) {
        let mut next_key = std::collections::HashMap::new();
        for p in &plan.items {
            let at = next_key.entry((p.seq, p.kv_head, p.queries)).or_insert(0);
            assert_eq!(p.keys.0, *at, "parts follow each other");
            assert!(p.keys.0 % 16 == 0 && p.keys.1 > p.keys.0);
            *at = p.keys.1;
        }
        let mut whole_items = 0;
        for (s, &(ctx, nq)) in seqs.iter().enumerate() {
            for h in 0..kv_heads {
                for t0 in (0..nq).step_by(QUERY_TILE) {
                    let t1 = (t0 + QUERY_TILE).min(nq);
                    let end = next_key.get(&(s, h, (t0, t1)));
                    assert_eq!(
                        end,
                        Some(&(ctx - nq + t1)),
                        "sequence {s} head {h} queries {t0}"
                    );
                    whole_items += 1;
                }
            }
        }
        assert_eq!(next_key.len(), whole_items, "no stray parts");
        let mut slots: Vec<usize> = plan.items.iter().filter_map(|p| p.split).collect();
        slots.sort_unstable();
        slots.dedup();
        let split_parts: usize = plan.splits.iter().map(|(_, r)| r.len()).sum();
        assert_eq!(slots.len(), split_parts, "one slot per split part");
        for (item, parts) in &plan.splits {
            assert!(parts.len() > 1);
            let parts = &plan.items[parts.clone()];
            assert!(parts
                .iter()
                .all(|p| p.split.is_some() && p.kv_head == item.kv_head));
            assert_eq!(parts.last().map(|p| p.keys.1), Some(item.keys.1));
        }
        if !plan.tasks.is_empty() {
            let mut end = 0;
            for t in &plan.tasks {
                assert_eq!(t.start, end, "tasks are consecutive runs of parts");
                assert!(t.end > t.start);
                end = t.end;
            }
            assert_eq!(end, plan.items.len());
        }
    }

    /// One decoding sequence becomes one task per thread of equal work (within a block), on
    /// block boundaries, with at most one split item per task boundary.
    #[test]
    fn decode_is_cut_into_one_equal_task_per_thread() {
        for (kv_heads, threads) in [(3, 2), (4, 2), (1, 2), (3, 4), (5, 2), (2, 3)] {
            let plan = decode_plan(kv_heads, 600, threads);
            let at = format!("{kv_heads} KV heads, {threads} threads");
            assert_covers(&plan, &[(600, 1)], kv_heads);
            assert_eq!(plan.tasks.len(), threads, "{at}");
            let share = kv_heads * 600 / threads;
            for t in &plan.tasks {
                let work: usize = plan.items[t.clone()]
                    .iter()
                    .map(|p| p.keys.1 - p.keys.0)
                    .sum();
                assert!(
                    work.abs_diff(share) <= 16,
                    "{at}: task of {work} keys, share {share}"
                );
            }
            assert!(plan.splits.len() < threads, "{at}");
        }
        // 3 heads on 2 threads: head 0 and half of head 1, the rest of head 1 and head 2.
        let plan = decode_plan(3, 600, 2);
        let keys: Vec<(usize, usize, usize)> = plan
            .items
            .iter()
            .map(|p| (p.kv_head, p.keys.0, p.keys.1))
            .collect();
        assert_eq!(keys, [(0, 0, 600), (1, 0, 304), (1, 304, 600), (2, 0, 600)]);
        assert_eq!(plan.splits.len(), 1);
        // Decodes only, however many: still one task per thread, whole items where they fit.
        let plan = decode_plan(8, 600, 2);
        assert_covers(&plan, &[(600, 1)], 8);
        assert_eq!(plan.tasks.len(), 2);
        assert!(plan.splits.is_empty());
    }

    /// Short contexts get fewer tasks (each at least `MIN_TASK_WORK`); a call with many prefill
    /// items keeps one task per item.
    #[test]
    fn short_calls_get_fewer_tasks_and_prefills_none() {
        let plan = decode_plan(1, 200, 4);
        assert_covers(&plan, &[(200, 1)], 1);
        assert_eq!(plan.tasks.len(), 1);
        assert!(plan.splits.is_empty());
        let plan = decode_plan(3, 100, 2);
        assert_covers(&plan, &[(100, 1)], 3);
        assert_eq!(plan.tasks.len(), 2);

        let g = geometry(3, 64);
        let table: Vec<u32> = (0..32).collect();
        let prefill = SeqAttention {
            query_start: 0,
            num_queries: 512,
            context_len: 512,
            block_table: &table,
        };
        let mut plan = Plan::default();
        plan_items(&mut plan, &[prefill], g, 2);
        assert_eq!(plan.items.len(), 3 * 512 / QUERY_TILE);
        assert!(plan.tasks.is_empty() && plan.splits.is_empty());
    }

    /// Mixed batches (sequences of different lengths, some prefilling a few tokens) keep every
    /// invariant and spread the work evenly.
    #[test]
    fn mixed_small_batches_are_covered_and_balanced() {
        let g = geometry(2, 256);
        let table: Vec<u32> = (0..256).collect();
        for (specs, threads) in [
            (vec![(1000, 1), (40, 1)], 2),
            (vec![(300, 3), (17, 1)], 3),
            (vec![(1, 1)], 2),
            (vec![(129, 1), (129, 1)], 4),
            (vec![(600, 1); 20], 2),
            (vec![(300, 100), (50, 1)], 2),
        ] {
            let mut start = 0;
            let seqs: Vec<SeqAttention> = specs
                .iter()
                .map(|&(ctx, nq)| {
                    let s = SeqAttention {
                        query_start: start,
                        num_queries: nq,
                        context_len: ctx,
                        block_table: &table,
                    };
                    start += nq;
                    s
                })
                .collect();
            let mut plan = Plan::default();
            plan_items(&mut plan, &seqs, g, threads);
            assert_covers(&plan, &specs, 2);
            let work = |p: &Item| (p.keys.1 - p.keys.0) * (p.queries.1 - p.queries.0);
            let total: usize = plan.items.iter().map(work).sum();
            for t in &plan.tasks {
                let w: usize = plan.items[t.clone()].iter().map(work).sum();
                let share = total / plan.tasks.len();
                assert!(w.abs_diff(share) <= 16 * 3, "{specs:?}: {w} vs {share}");
            }
            let decodes_only = specs.iter().all(|s| s.1 == 1);
            if decodes_only && total >= threads * MIN_TASK_WORK {
                assert_eq!(plan.tasks.len(), threads, "{specs:?}");
                assert!(plan.splits.len() < threads, "{specs:?}");
            }
            if !decodes_only && plan.items.len() >= threads * ITEMS_PER_THREAD {
                assert!(plan.tasks.is_empty() && plan.splits.is_empty(), "{specs:?}");
            }
        }
    }
}
