//! [`Cancel`]: stops a sampler's run between steps, from any thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::RtError;

/// A flag that stops the runs it is passed to at their next step (a phase-1 token, a layer's
/// loop, a denoising step) with [`RtError::Cancelled`]: for a server whose client went away, or
/// an application's stop button. Clones share the flag; a new one is not cancelled.
///
/// ```no_run
/// use itarflow_rt::{Cancel, Model, Sampler};
/// let sampler = Sampler::builder(Model::load("models/fmnist/package")?).build()?;
/// let cancel = Cancel::new();
/// let stop = cancel.clone();
/// std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_millis(50));
///     stop.cancel();
/// });
/// let z = itarflow_base::prior_noise(0, 64 * sampler.model().noise_len());
/// let run = sampler.sample_cancellable(&z, &vec![3; 64], sampler.settings(), &cancel, &mut |_| {});
/// assert!(matches!(run, Err(itarflow_rt::RtError::Cancelled)));
/// # Ok::<(), itarflow_rt::RtError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops every run holding this flag (or a clone of it) at its next step.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// [`RtError::Cancelled`] once cancelled.
    pub fn check(&self) -> Result<(), RtError> {
        if self.is_cancelled() { Err(RtError::Cancelled) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::Cancel;

    #[test]
    fn clones_share_the_flag() {
        let a = Cancel::new();
        let b = a.clone();
        assert!(a.check().is_ok() && !b.is_cancelled());
        b.cancel();
        assert!(a.is_cancelled());
        assert!(matches!(a.check(), Err(crate::RtError::Cancelled)));
        assert!(!Cancel::new().is_cancelled(), "a new flag is its own");
    }
}
