//! Model configuration: defined in `itarflow-base` (shared with the exporter and the runtime,
//! which have no Burn) and re-exported here.

pub use itarflow_base::config::*;
