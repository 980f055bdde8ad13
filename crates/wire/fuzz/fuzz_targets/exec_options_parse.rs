//! Any query string: parsing never panics, and whatever parses re-encodes to
//! a query that parses to the same options.
#![no_main]

use hatch_wire::exec_options::ExecOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else { return };
    if let Ok(opts) = ExecOptions::from_query(query) {
        assert_eq!(ExecOptions::from_query(&opts.to_query()), Ok(opts));
    }
});
