//! Speculative decoding by n-gram prompt lookup: draft tokens proposed from the request's own
//! text, verified by the model in one step.
//!
//! A decoding request whose last `n` tokens (`prompt_lookup_max` down to `prompt_lookup_min`)
//! occurred earlier in its prompt or output gets as drafts the (up to `num_speculative_tokens`)
//! tokens that followed the most recent earlier occurrence — copied as an overlapping copy, so
//! that when that occurrence is close (text repeating with a short period) the drafts go on
//! repeating the period instead of stopping at the end of the text. The step then computes the request's
//! last token and its drafts together (one forward, the weights read once), and the engine
//! samples each position in turn with the request's own sampler and random stream, keeping the
//! drafts up to the first one that differs from the token sampled at its position; that sampled
//! token ends the run. Each kept token is thus exactly the token plain decoding would have
//! sampled (same logits, same random draw, one draw per token), so outputs — greedy or seeded —
//! do not change; only steps are saved. Text that repeats itself (code edits, quoting the prompt,
//! lists, loops) verifies several tokens per step; elsewhere the drafts are rarely found, and a
//! step with no match costs nothing extra.

use pagoda_core::TokenId;

/// `--num-speculative-tokens` and the n-gram window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeculativeConfig {
    /// Most draft tokens verified per request per step.
    pub num_speculative_tokens: usize,
    /// Longest suffix n-gram looked up.
    pub prompt_lookup_max: usize,
    /// Shortest suffix n-gram looked up.
    pub prompt_lookup_min: usize,
    /// No drafts while more requests than this run (vLLM's `disable_by_batch_size`): a step of
    /// many sequences is compute-bound on a CPU, where drafts that are not accepted cost their
    /// full share of it.
    pub disable_by_batch_size: Option<usize>,
}

impl SpeculativeConfig {
    /// Checks the window (`1 ≤ min ≤ max`) and the draft count (≥ 1).
    pub fn validate(&self) -> Result<(), String> {
        if self.num_speculative_tokens == 0 {
            return Err("num_speculative_tokens must be at least 1".into());
        }
        if self.prompt_lookup_min == 0 || self.prompt_lookup_min > self.prompt_lookup_max {
            return Err(format!(
                "prompt_lookup_min ({}) must be at least 1 and at most prompt_lookup_max ({})",
                self.prompt_lookup_min, self.prompt_lookup_max
            ));
        }
        Ok(())
    }

    /// Replaces `drafts` with at most `max_drafts` (and `num_speculative_tokens`) tokens that
    /// followed the most recent earlier occurrence of the longest suffix n-gram of `tokens`,
    /// reading on into the drafts themselves past the end of `tokens` (empty when no suffix of
    /// `prompt_lookup_min..=prompt_lookup_max` tokens recurs).
    pub fn propose(&self, tokens: &[TokenId], max_drafts: usize, drafts: &mut Vec<TokenId>) {
        drafts.clear();
        let want = self.num_speculative_tokens.min(max_drafts);
        if want == 0 {
            return;
        }
        let len = tokens.len();
        for n in (self.prompt_lookup_min..=self.prompt_lookup_max.min(len.saturating_sub(1))).rev()
        {
            let suffix = &tokens[len - n..];
            // Occurrences start at `i < len - n`, so at least one token follows each.
            if let Some(i) = (0..len - n).rev().find(|&i| tokens[i..i + n] == *suffix) {
                for src in i + n..i + n + want {
                    let token = match tokens.get(src) {
                        Some(&t) => t,
                        None => drafts[src - len],
                    };
                    drafts.push(token);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(k: usize, min: usize, max: usize) -> SpeculativeConfig {
        SpeculativeConfig {
            num_speculative_tokens: k,
            prompt_lookup_max: max,
            prompt_lookup_min: min,
            disable_by_batch_size: None,
        }
    }

    fn propose(c: SpeculativeConfig, tokens: &[TokenId], max: usize) -> Vec<TokenId> {
        let mut drafts = vec![99];
        c.propose(tokens, max, &mut drafts);
        drafts
    }

    #[test]
    fn the_longest_recurring_suffix_proposes_what_followed_its_latest_occurrence() {
        let c = config(3, 1, 3);
        // Suffix [1, 2] occurred at 0 (followed by 3 4 5) and at 5 (followed by 7 1 2).
        assert_eq!(
            propose(c, &[1, 2, 3, 4, 5, 1, 2, 7, 1, 2], 8),
            vec![7, 1, 2]
        );
        // The 3-gram [9, 1, 2] recurs only at 0, and beats the later 2-gram match.
        assert_eq!(
            propose(c, &[9, 1, 2, 3, 4, 1, 2, 5, 9, 1, 2], 8),
            vec![3, 4, 1]
        );
        // Fewer tokens follow than asked: the copy reads on into the drafts, so a short period
        // goes on repeating.
        assert_eq!(propose(c, &[5, 6, 5], 8), vec![6, 5, 6]);
        assert_eq!(propose(c, &[4, 4, 4, 4], 8), vec![4, 4, 4]);
        assert_eq!(
            propose(config(5, 2, 4), &[8, 1, 2, 1, 2], 8),
            vec![1, 2, 1, 2, 1]
        );
    }

    #[test]
    fn no_match_or_no_room_proposes_nothing() {
        let c = config(4, 2, 3);
        assert!(propose(c, &[1, 2, 3, 4, 5], 8).is_empty());
        // Only a 1-gram recurs, below prompt_lookup_min.
        assert!(propose(c, &[1, 2, 3, 1], 8).is_empty());
        // The request may take no more tokens.
        assert!(propose(c, &[1, 2, 3, 1, 2], 0).is_empty());
        assert!(propose(c, &[], 8).is_empty());
        assert!(propose(c, &[7], 8).is_empty());
        // Capped by both limits.
        assert_eq!(propose(c, &[1, 2, 3, 4, 5, 6, 1, 2], 2), vec![3, 4]);
        assert_eq!(
            propose(config(2, 2, 3), &[1, 2, 3, 4, 5, 1, 2], 8),
            vec![3, 4]
        );
    }

    #[test]
    fn windows_are_validated() {
        assert!(config(3, 1, 4).validate().is_ok());
        assert!(config(0, 1, 4).validate().is_err());
        assert!(config(3, 0, 4).validate().is_err());
        assert!(config(3, 5, 4).validate().is_err());
    }
}
