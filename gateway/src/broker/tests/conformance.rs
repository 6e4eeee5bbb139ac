//! MQTT 3.1.1 and 5 as the specifications say, for what goes through the router (issue 17): each test
//! runs a real broker with real clients (rumqttc, v5 where MQTT 5 is the point) and checks what they see.

use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, Publish as Publish5};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};

use super::*;

/// A broker that grants every device every topic a rule can grant, as the Paho scenarios run it.
async fn start_open() -> Arc<Broker> {
    start_granting("#", |_| {}).await
}

fn options5(broker: &Broker, client_id: &str) -> Options5 {
    let port = broker.local_addrs()[0].port();
    let mut options = Options5::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    options
}

/// An MQTT 5 client and every packet it receives after its CONNACK.
struct Client {
    client: Client5,
    rx: mpsc::UnboundedReceiver<Packet5>,
}

async fn connect5(options: Options5) -> Client {
    let (client, mut eventloop) = Client5::new(options, 100);
    let connack = tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .expect("CONNACK in time")
        .expect("connected");
    assert!(matches!(connack, Event5::Incoming(Packet5::ConnAck(_))));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event5::Incoming(packet) = event {
                if tx.send(packet).is_err() {
                    break;
                }
            }
        }
    });
    Client { client, rx }
}

impl Client {
    async fn next<T>(&mut self, mut pick: impl FnMut(Packet5) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let packet = self.rx.recv().await.expect("client still connected");
                if let Some(found) = pick(packet) {
                    return found;
                }
            }
        })
        .await
        .expect("expected packet in time")
    }

    async fn subscribed(&mut self) {
        self.next(|p| matches!(p, Packet5::SubAck(_)).then_some(()))
            .await;
    }

    async fn publish(&mut self) -> Publish5 {
        self.next(|p| match p {
            Packet5::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    async fn puback(&mut self) {
        self.next(|p| matches!(p, Packet5::PubAck(_)).then_some(()))
            .await;
    }
}

#[tokio::test]
async fn a_message_arrives_at_the_lower_of_its_qos_and_the_subscriptions() {
    let broker = start_open().await;
    let mut b = connect5(options5(&broker, "b")).await;
    b.client.subscribe("q/#", QoS5::AtLeastOnce).await.unwrap();
    b.subscribed().await;
    let mut a = connect5(options5(&broker, "a")).await;
    // More QoS 0 messages than the router lets a link have in flight: each is settled with the router as
    // it is written, or the QoS 1 one would wait behind them for good.
    for i in 0..150 {
        let payload = format!("zero {i}");
        (a.client
            .publish("q/0", QoS5::AtMostOnce, false, payload)
            .await)
            .unwrap();
    }
    (a.client
        .publish("q/1", QoS5::AtLeastOnce, false, "one")
        .await)
        .unwrap();
    a.puback().await;
    for i in 0..150 {
        let p = b.publish().await;
        assert_eq!(
            (p.payload, p.qos),
            (format!("zero {i}").into(), QoS5::AtMostOnce)
        );
    }
    let p = b.publish().await;
    assert_eq!((p.payload, p.qos), (Bytes::from("one"), QoS5::AtLeastOnce));

    // A retained QoS 0 message, sent on a new QoS 1 subscription: QoS 0 too, retain flag set.
    (a.client
        .publish("r/0", QoS5::AtMostOnce, true, "kept")
        .await)
        .unwrap();
    (a.client
        .publish("q/1", QoS5::AtLeastOnce, false, "after")
        .await)
        .unwrap();
    assert_eq!(b.publish().await.payload, Bytes::from("after"));
    b.client.subscribe("r/#", QoS5::AtLeastOnce).await.unwrap();
    let p = b.publish().await;
    assert_eq!(
        (p.payload, p.qos, p.retain),
        (Bytes::from("kept"), QoS5::AtMostOnce, true)
    );
}

#[tokio::test]
async fn a_qos0_message_is_not_kept_for_an_absent_session() {
    let broker = start_open().await;
    let mut persistent = options(&broker, "b");
    persistent.set_clean_session(false);
    let (b, mut rx) = connect(persistent.clone()).await;
    b.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut rx).await;
    b.disconnect().await.unwrap();
    gone(&broker, "b").await;

    let (a, mut sent) = connect(options(&broker, "a")).await;
    (a.publish("q/0", QoS::AtMostOnce, false, "zero").await).unwrap();
    (a.publish("q/1", QoS::AtLeastOnce, false, "one").await).unwrap();
    next_matching(&mut sent, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    // The QoS 1 message is in the session (the QoS 0 one came before it, on the same filter).
    tokio::time::timeout(WAIT, async {
        while broker.shared.outlets.waiting("b") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the QoS 1 message kept in time");

    let (_b, mut rx) = connect(persistent).await;
    assert_eq!(publish(&mut rx).await, ("q/1".into(), Bytes::from("one")));
}
