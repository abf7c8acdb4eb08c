//! The hub's edge: sources that parse device and dispatch-system input into `rules::Event`s
//! (MQTT, Modbus TCP, outage feeds) and outbound channels (SMTP, SMS, messenger).
//! Filled in by the connectors and campaigns issues.
