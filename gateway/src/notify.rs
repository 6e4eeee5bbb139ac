//! Job notifications to devices (being written): `notify`, `notify-next`, and their namespace forms.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::broker::{Broker, BrokerError};
use crate::jobs::{Engine, JobEvent};

/// Turns job events into MQTT notifications until `shutdown` turns true.
pub async fn run(
    _broker: Arc<Broker>,
    _engine: Arc<Engine>,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BrokerError> {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            event = events.recv() => if event.is_none() { return Ok(()) },
        }
    }
}
