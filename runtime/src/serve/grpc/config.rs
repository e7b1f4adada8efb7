//! Model configurations ([`crate::serve::config`]) and the repository index
//! ([`crate::serve::repository`]) as Triton's gRPC messages.

use super::messages::{
    ModelConfig, ModelConfigResponse, ModelIndex, ModelInput, ModelInstanceGroup, ModelOutput, ModelParameter, RepositoryIndexResponse,
};
use crate::serve::config;
use crate::serve::repository::IndexEntry;

/// `ModelConfigResponse` of `c`.
pub fn response(c: config::ModelConfig) -> ModelConfigResponse {
    let config = ModelConfig {
        name: c.name,
        platform: c.platform.into(),
        backend: c.backend.into(),
        max_batch_size: c.max_batch_size,
        input: c
            .input
            .into_iter()
            .map(|t| ModelInput {
                name: t.name.into(),
                data_type: t.data_type.triton().1,
                dims: t.dims,
                optional: t.optional.unwrap_or(false),
            })
            .collect(),
        output: c
            .output
            .into_iter()
            .map(|t| ModelOutput { name: t.name.into(), data_type: t.data_type.triton().1, dims: t.dims })
            .collect(),
        instance_group: c
            .instance_group
            .into_iter()
            .map(|g| ModelInstanceGroup { name: g.name, count: g.count, kind: g.kind.number() })
            .collect(),
        parameters: c.parameters.into_iter().map(|(k, p)| (k.to_string(), ModelParameter { string_value: p.string_value })).collect(),
    };
    ModelConfigResponse { config: Some(config) }
}

/// `RepositoryIndexResponse` of `index`.
pub fn index(index: Vec<IndexEntry>) -> RepositoryIndexResponse {
    let models = index
        .into_iter()
        .map(|e| ModelIndex { name: e.name, version: e.version.into(), state: e.state.into(), reason: e.reason })
        .collect();
    RepositoryIndexResponse { models }
}
