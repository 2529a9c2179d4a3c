use serde::{Deserialize, Serialize};

// Without `#[repr(C)]` this message travels serialized (postcard)...
#[derive(shmbus::Message, Serialize, Deserialize)]
struct Note {
    text: String,
}

fn main() {
    let tx = shmbus::Sender::<Note>::open_or_create("notes", &shmbus::Options::new()).unwrap();
    // ...so there is no slot to write it into in place: `loan` is for zero-copy messages.
    let mut slot = tx.loan().unwrap();
    slot.text = "hello".to_owned();
    slot.send();
}
