//! Delivery receipts: what a gateway reports later about a message it accepted, for the component
//! that tracks each message's final state (the campaign dispatcher). A channel whose gateway sends
//! receipts (SMPP) hands them out through [`Channel::take_receipts`](super::Channel::take_receipts);
//! each [`Delivery::message_ids`](super::Delivery::message_ids) entry gets its own receipts.

use tokio::sync::oneshot;

/// Receipts waiting for their consumer, per channel. When it is full the gateway is told to try
/// again later (nothing is dropped).
pub const RECEIPTS_CAPACITY: usize = 1024;

/// What the gateway says became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptState {
    /// It reached the phone (`DELIVRD`).
    Delivered,
    /// It never will: expired, deleted, undeliverable, rejected or in an unknown state.
    Failed,
    /// Not final yet (`ENROUTE`, `ACCEPTD`): another receipt may follow.
    Pending,
}

/// One delivery receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The id the gateway gave when it accepted the message (one of `Delivery::message_ids`).
    pub message_id: String,
    pub state: ReceiptState,
    /// The gateway's own words, shortened: `stat:UNDELIV err:001`, with the network error if any.
    pub detail: String,
    /// The phone the message went to, as the gateway wrote it.
    pub to: String,
}

/// A receipt handed to its consumer, with the gateway waiting for an answer: complete `ack` once the
/// receipt is persisted. Dropping it unanswered (or not answering within the channel's timeout) asks
/// the gateway to send the receipt again later, so none is lost to a crash; a consumer must therefore
/// take the same receipt twice calmly.
#[derive(Debug)]
pub struct IncomingReceipt {
    pub receipt: Receipt,
    pub ack: oneshot::Sender<()>,
}

/// The stream of a channel's receipts.
pub type Receipts = tokio::sync::mpsc::Receiver<IncomingReceipt>;
