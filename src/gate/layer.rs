//! [`KeyGateLayer`].

use std::sync::Arc;

use tower_layer::Layer;

use super::{Gate, GateConfig, KeyGate};
use crate::store::Store;

/// Applies [`KeyGate`] to a service. Cloning it is one reference count.
#[derive(Debug, Clone)]
pub struct KeyGateLayer {
    gate: Arc<Gate>,
}

impl KeyGateLayer {
    /// A layer that checks requests against `store` as `config` says.
    pub fn new(store: Store, config: GateConfig) -> Self {
        KeyGateLayer {
            gate: Arc::new(Gate::new(store, config, None)),
        }
    }

    /// The same layer with ZIA-compatible session login on
    /// ([`crate::session`]): the gate answers `{base_url}{config.path}`
    /// itself, and calls with a live session's `JSESSIONID` cookie and no
    /// key header are checked as keyed calls are.
    pub fn with_sessions(self, config: crate::session::SessionConfig) -> Self {
        KeyGateLayer {
            gate: Arc::new(Gate::new(
                self.gate.store.clone(),
                self.gate.config.clone(),
                Some(config),
            )),
        }
    }
}

impl<S> Layer<S> for KeyGateLayer {
    type Service = KeyGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyGate::from_parts(inner, Arc::clone(&self.gate))
    }
}
