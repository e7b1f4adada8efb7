//! Phase 1 of many images: batches handed to worker threads through a shared counter (one worker
//! on engines that parallelise inside a run, one per thread on those whose runs proceed in
//! parallel), progress sent back to the calling thread through a channel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use super::Progress;
use crate::RtError;

/// Phase 1 of the images [start, start + n), reporting per-layer progress: their images.
pub(super) type ChunkWork<'a> = dyn Fn(usize, usize, &mut dyn FnMut(Progress)) -> Result<Vec<f32>, RtError> + Sync + 'a;

/// Runs `work(start, n, report)` over `chunks` (image ranges of `per_z` noise values each) on
/// `workers` threads and concatenates their outputs in chunk order. `work` reports per-layer
/// progress, forwarded to `progress` with the batch numbered.
pub(super) fn run_chunks(
    chunks: &[(usize, usize)],
    workers: usize,
    work: &ChunkWork,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, RtError> {
    let batches = chunks.len();
    let next = AtomicUsize::new(0);
    let parts: Mutex<Vec<Option<Vec<f32>>>> = Mutex::new(vec![None; batches]);
    let (tx, rx) = mpsc::channel::<Progress>();
    std::thread::scope(|scope| {
        let (next, parts) = (&next, &parts);
        let handles: Vec<_> = (0..workers.clamp(1, batches.max(1)))
            .map(|_| {
                let tx = tx.clone();
                scope.spawn(move || -> Result<(), RtError> {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(start, n)) = chunks.get(k) else { return Ok(()) };
                        let mut report = |p| {
                            if let Progress::Invert { layer, layers, .. } = p {
                                let _ = tx.send(Progress::Invert { layer, layers, batch: k + 1, batches });
                            }
                        };
                        let part = work(start, n, &mut report)?;
                        parts.lock().map_err(|_| RtError::Internal("phase-1 results lock poisoned".into()))?[k] = Some(part);
                    }
                })
            })
            .collect();
        drop(tx);
        for p in rx {
            progress(p);
        }
        for h in handles {
            h.join().map_err(|_| RtError::Internal("a phase-1 thread panicked".into()))??;
        }
        Ok::<(), RtError>(())
    })?;
    let parts = parts.into_inner().map_err(|_| RtError::Internal("phase-1 results lock poisoned".into()))?;
    Ok(parts.into_iter().flatten().flatten().collect())
}
