#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| shmbus::fuzz_api::file_log(data));
