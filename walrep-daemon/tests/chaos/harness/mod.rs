//! Everything the scenarios share: the cluster of two processes behind
//! proxies (and a witness, for the arbiter's scenarios), the load that records outcomes, the checks and the figures.

mod cluster;
mod figures;
mod history;
mod invariants;
mod load;
mod node_files;
mod proxy;
mod witness;

pub use cluster::*;
pub use figures::*;
pub use history::*;
pub use invariants::*;
pub use load::*;
pub use node_files::*;
pub use proxy::*;
pub use witness::*;
