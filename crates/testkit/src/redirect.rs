//! In-pod capture for pods a test wires itself: the node agent's own rules (`ambit-capture`,
//! nftables backend) applied inside the pod, for tests that run ztunnel without the agent.

use ambit_capture::Backend;
use anyhow::Context as _;

use crate::Pod;

pub use ambit_capture::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, ZTUNNEL_MARK};

impl Pod {
    /// Installs the capture rules (replacing any earlier copy) inside the pod.
    pub fn install_capture(&self) -> anyhow::Result<()> {
        ambit_capture::install(Backend::Nftables, &self.netns.path())
            .with_context(|| format!("capture rules in pod {} ({})", self.name, self.netns))
    }

    /// Removes the capture rules from the pod; a no-op if they are absent.
    pub fn remove_capture(&self) -> anyhow::Result<()> {
        ambit_capture::remove(Backend::Nftables, &self.netns.path())
            .with_context(|| format!("capture rules in pod {} ({})", self.name, self.netns))
    }

    /// `nft list ruleset` inside the pod, for assertions and debugging.
    pub fn nft_ruleset(&self) -> anyhow::Result<String> {
        self.netns.exec(&["nft", "list", "ruleset"])
    }
}
