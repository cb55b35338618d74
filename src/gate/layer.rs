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
            gate: Arc::new(Gate { store, config }),
        }
    }
}

impl<S> Layer<S> for KeyGateLayer {
    type Service = KeyGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyGate::from_parts(inner, Arc::clone(&self.gate))
    }
}
