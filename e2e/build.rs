include!("../worker/build.rs");
