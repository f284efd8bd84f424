//! The wall clock as the relay writes it down: milliseconds since the Unix epoch, the clock of
//! inbox ids (`MsgId`), of records' creation times and ledger days, of delivery latency, and of
//! the SDK's message times and token expiries.

/// Milliseconds since the Unix epoch (0 on a clock set before it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
