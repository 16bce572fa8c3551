//! Untrusted input never panics the parsers.

use proptest::prelude::*;
use silo_pki::{
    KeyType, agent_id_from_cert, generate_csr, generate_key, parse_cert_info, parse_csr,
};

fn armor(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_csr_never_panics_on_text(s in ".{0,2000}") {
        let _ = parse_csr(&s);
    }

    #[test]
    fn parse_csr_never_panics_on_armored_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = parse_csr(&armor("CERTIFICATE REQUEST", &bytes));
        let _ = parse_cert_info(&bytes);
        let _ = agent_id_from_cert(&bytes);
    }
}

#[test]
fn mutated_csrs_never_panic_nor_change_the_key() {
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let pem_text = generate_csr("agent-1", &key).unwrap();
    let der = pem::parse(&pem_text).unwrap().into_contents();
    let original = parse_csr(&pem_text).unwrap();
    proptest!(ProptestConfig::with_cases(512), |(idx in 0..der.len(), xor in 1u8..=255)| {
        let mut mutated = der.clone();
        mutated[idx] ^= xor;
        // The parser tolerates some changes to the unsigned envelope (e.g. a
        // SEQUENCE tag's class bits), but a change that gets through can
        // never alter the key to be certified: that part is signed.
        if let Ok(csr) = parse_csr(&armor("CERTIFICATE REQUEST", &mutated)) {
            prop_assert_eq!(csr.public_key(), original.public_key());
        }
    });
}
