//! The AWS IoT Jobs device API over MQTT (being written).

use std::sync::Arc;

use tokio::sync::watch;

use crate::broker::{Broker, BrokerError};
use crate::jobs::Engine;

/// Serves device requests until `shutdown` turns true.
pub async fn serve(
    _broker: Arc<Broker>,
    _engine: Arc<Engine>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BrokerError> {
    let _ = shutdown.wait_for(|stop| *stop).await;
    Ok(())
}
