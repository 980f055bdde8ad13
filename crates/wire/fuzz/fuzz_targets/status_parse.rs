//! The error channel as a client reads it, and Status bodies: never panic.
#![no_main]

use hatch_wire::status::{ExecOutcome, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ExecOutcome::from_error_stream(data, true);
    let _ = ExecOutcome::from_error_stream(data, false);
    if let Ok(status) = Status::from_json(data) {
        let _ = status.to_json();
        let _ = status.error_channel_payload(false);
    }
});
