//! Engine options shared by every subcommand that runs the engine (bench throughput, serve).

use clap::Args;
use pagoda_engine::engine::EngineConfig;
use pagoda_engine::speculative::SpeculativeConfig;

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Most tokens computed in one engine step, over all requests (prefill chunks + decodes).
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Most requests running at once.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Turn off automatic prefix caching (reuse of cached K/V blocks across requests that share
    /// a prefix; on by default).
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Speculative decoding by n-gram prompt lookup: up to this many draft tokens, taken from
    /// where the request's last tokens occurred earlier in its prompt or output, verified per
    /// decoding request per step (0: off). Outputs do not change; text that repeats itself
    /// decodes in fewer steps. 3 keeps a single stream's verification on the decode kernels.
    #[arg(long, default_value_t = 0)]
    pub num_speculative_tokens: usize,
    /// Longest suffix n-gram looked up for drafts.
    #[arg(long, default_value_t = 4)]
    pub prompt_lookup_max: usize,
    /// Shortest suffix n-gram looked up for drafts.
    #[arg(long, default_value_t = 2)]
    pub prompt_lookup_min: usize,
    /// No drafts while more requests than this are running (a CPU step of many sequences is
    /// compute-bound: rejected drafts then cost their full share).
    #[arg(long)]
    pub speculative_disable_by_batch_size: Option<usize>,
}

impl EngineArgs {
    pub fn config(&self) -> anyhow::Result<EngineConfig> {
        anyhow::ensure!(
            self.max_num_batched_tokens >= 1,
            "--max-num-batched-tokens must be at least 1"
        );
        anyhow::ensure!(self.max_num_seqs >= 1, "--max-num-seqs must be at least 1");
        let speculative = (self.num_speculative_tokens > 0)
            .then_some(SpeculativeConfig {
                num_speculative_tokens: self.num_speculative_tokens,
                prompt_lookup_max: self.prompt_lookup_max,
                prompt_lookup_min: self.prompt_lookup_min,
                disable_by_batch_size: self.speculative_disable_by_batch_size,
            })
            .map(|c| {
                c.validate()
                    .map(|()| c)
                    .map_err(|e| anyhow::anyhow!("--num-speculative-tokens: {e}"))
            })
            .transpose()?;
        Ok(EngineConfig {
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            enable_prefix_caching: !self.no_prefix_caching,
            speculative,
        })
    }
}
