// A minimal single-threaded HTTP/1.0 server on std::net for socket mode: each answer says how
// many connections this process served, so a reset per connection shows as "count=1".
use std::io::{Read, Write};
use std::net::TcpListener;

fn main() {
    let listener = TcpListener::bind("127.0.0.1:8000").expect("bind");
    let mut count = 0u64;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        count += 1;
        let path = String::from_utf8_lossy(&request).split(' ').nth(1).unwrap_or("?").to_string();
        if path == "/crash" {
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
        }
        let body = format!("{} count={}\n", path, count);
        let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let _ = stream.write_all((head + &body).as_bytes());
    }
}
