//! The server's per-model statistics ([`crate::serve::stats`]) as Triton's `ModelStatistics`
//! messages.

use super::messages::{InferBatchStatistics, InferStatistics, ModelStatistics, ModelStatisticsResponse, StatisticDuration};
use crate::serve::stats::{ModelStats, StatDuration};

fn duration(d: StatDuration) -> Option<StatisticDuration> {
    Some(StatisticDuration { count: d.count, ns: d.ns })
}

/// `ModelStatisticsResponse` of `stats`.
pub fn response(stats: Vec<ModelStats>) -> ModelStatisticsResponse {
    let model_stats = stats
        .into_iter()
        .map(|m| {
            let i = m.inference_stats;
            ModelStatistics {
                name: m.name,
                version: m.version,
                last_inference: m.last_inference,
                inference_count: m.inference_count,
                execution_count: m.execution_count,
                inference_stats: Some(InferStatistics {
                    success: duration(i.success),
                    fail: duration(i.fail),
                    queue: duration(i.queue),
                    compute_input: duration(i.compute_input),
                    compute_infer: duration(i.compute_infer),
                    compute_output: duration(i.compute_output),
                    cache_hit: duration(i.cache_hit),
                    cache_miss: duration(i.cache_miss),
                }),
                batch_stats: m
                    .batch_stats
                    .into_iter()
                    .map(|b| InferBatchStatistics {
                        batch_size: b.batch_size,
                        compute_input: duration(b.compute_input),
                        compute_infer: duration(b.compute_infer),
                        compute_output: duration(b.compute_output),
                    })
                    .collect(),
            }
        })
        .collect();
    ModelStatisticsResponse { model_stats }
}
