//! Engine options shared by every subcommand that runs the engine (bench throughput, serve).

use clap::Args;
use pagoda_engine::engine::EngineConfig;

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
}

impl EngineArgs {
    pub fn config(&self) -> anyhow::Result<EngineConfig> {
        anyhow::ensure!(
            self.max_num_batched_tokens >= 1,
            "--max-num-batched-tokens must be at least 1"
        );
        anyhow::ensure!(self.max_num_seqs >= 1, "--max-num-seqs must be at least 1");
        Ok(EngineConfig {
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            enable_prefix_caching: !self.no_prefix_caching,
        })
    }
}
