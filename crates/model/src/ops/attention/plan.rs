//! Work planning for paged attention: one item per (sequence, KV head, tile of queries), split
//! across key ranges when a call has too few items for the threads (one or two decoding
//! sequences), and the merge of the split parts' partial softmax states (flash-decoding).

use super::{exp_nonpositive, AttentionShape, SeqAttention};
use crate::kv_cache::KvGeometry;

/// Queries per work item.
pub(super) const QUERY_TILE: usize = 16;
/// A call with fewer items than this many per thread splits long key ranges across items.
const ITEMS_PER_THREAD: usize = 4;
/// Smallest key range of a split part.
const MIN_SPLIT_KEYS: usize = 128;

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
}

/// Fills `plan` with one item per (sequence, KV head, query tile), splitting key ranges when there
/// are too few items for the threads.
pub(super) fn plan_items(
    plan: &mut Plan,
    seqs: &[SeqAttention<'_>],
    g: KvGeometry,
    threads: usize,
) {
    plan.items.clear();
    plan.splits.clear();
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
    if threads <= 1 || plan.items.len() >= threads * ITEMS_PER_THREAD {
        return;
    }
    let unit = MIN_SPLIT_KEYS.div_ceil(g.block_size) * g.block_size;
    let n = plan.items.len();
    let longest = plan
        .items
        .iter()
        .map(|it| it.keys.1 / unit)
        .max()
        .unwrap_or(1);
    let mut want = (threads * ITEMS_PER_THREAD).div_ceil(n).min(longest.max(1));
    // A whole number of items per thread (the threads finish together): fewer, longer parts
    // where that still gives every thread an item. Measured on the 135M shape (3 KV heads, 2
    // threads), interleaving the two plans step by step in one decode: 6 items of ~300 keys took
    // 2% less time per step (median of 8 windows of 128 steps) than 9 of ~200; 12 items of ~150
    // took 5% more.
    let mut whole_per_thread = want;
    while whole_per_thread > 1 && !(n * whole_per_thread).is_multiple_of(threads) {
        whole_per_thread -= 1;
    }
    if (n * whole_per_thread).is_multiple_of(threads) && n * whole_per_thread >= threads {
        want = whole_per_thread;
    }
    let whole = std::mem::take(&mut plan.items);
    let mut slot = 0;
    for item in whole {
        // Parts of at least `unit` keys, near-equal so the threads finish together; boundaries on
        // block multiples, so a part's chunks start at block starts.
        let parts = want.min(item.keys.1 / unit);
        if parts <= 1 {
            plan.items.push(item);
            continue;
        }
        let per = item.keys.1.div_ceil(parts).div_ceil(g.block_size) * g.block_size;
        let first = plan.items.len();
        for lo in (0..item.keys.1).step_by(per) {
            plan.items.push(Item {
                keys: (lo, (lo + per).min(item.keys.1)),
                split: Some(slot),
                ..item
            });
            slot += 1;
        }
        plan.splits.push((item, first..plan.items.len()));
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

    fn decode_plan(kv_heads: usize, context: usize, threads: usize) -> Plan {
        let g = KvGeometry {
            block_size: 16,
            num_blocks: 64,
            num_kv_heads: kv_heads,
            head_dim: 64,
        };
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

    /// One decoding sequence splits into a whole number of items per thread, near-equal parts on
    /// block boundaries that cover its keys once.
    #[test]
    fn decode_splits_give_every_thread_the_same_number_of_items() {
        for (kv_heads, threads, want_items) in
            [(3, 2, 6), (4, 2, 8), (1, 2, 4), (3, 4, 12), (5, 2, 10)]
        {
            let plan = decode_plan(kv_heads, 600, threads);
            assert_eq!(
                plan.items.len(),
                want_items,
                "{kv_heads} KV heads, {threads} threads"
            );
            for (item, parts) in &plan.splits {
                let parts = &plan.items[parts.clone()];
                let covered: usize = parts.iter().map(|p| p.keys.1 - p.keys.0).sum();
                assert_eq!(covered, item.keys.1);
                assert!(parts.iter().all(|p| p.keys.0 % 16 == 0));
            }
        }
        // 3 parts of ≥ 128 keys fit 400 keys, but 9 items do not split evenly over 2 threads.
        assert_eq!(decode_plan(3, 400, 2).items.len(), 6);
        // Too short to split: one item per KV head.
        assert_eq!(decode_plan(3, 100, 2).items.len(), 3);
    }
}
