//! SPIFFE IDs arrive from peers (certificate URI SANs) and from config: parsing must never
//! panic, and what we print must parse back to the same identity.
#![no_main]

use ambit_identity::SpiffeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(id) = text.parse::<SpiffeId>() {
        let printed = id.to_string();
        let reparsed: SpiffeId = printed
            .parse()
            .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not parse back: {e}"));
        assert_eq!(reparsed, id, "{text:?} printed as {printed:?}");
        assert_eq!(reparsed.to_string(), printed);
    }
});
