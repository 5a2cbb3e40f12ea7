//! The agents between third-party clients and servers, as issue 22 tried
//! them: curl and nghttp in front, nginx behind (as `web`, port 9081),
//! with what a new user sends, hostile input included. Each test skips
//! when its tools are missing (`.ci/run` installs them).

use trellis_e2e::third_party::{nginx_big_headers, tool, Nginx};

use crate::fixture::{status, Loopback};

/// nginx as `web`, with `locations`.
fn nginx(lb: &Loopback, locations: &str) -> anyhow::Result<Option<Nginx>> {
    let Some(bin) = tool("nginx") else {
        return Ok(None);
    };
    Ok(Some(Nginx::start(&bin, &lb.dir, lb.web_addr(), locations)?))
}

/// A response with 20 KB of headers reaches curl; one with 70 KB, past
/// the 60 KiB limit, is a 502 from the server's agent (`UPE`), and the
/// POST reached nginx once: an answer that has begun to arrive is not
/// sent for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_headers_pass_and_too_large_ones_are_a_502_not_a_retry() -> anyhow::Result<()>
{
    let lb = Loopback::start().await?;
    let locations = format!(
        "    location /big20 {{\n{}      return 200 \"ok\";\n    }}\n    location /big70 {{\n{}      return 200 \"ok\";\n    }}\n",
        nginx_big_headers(20_000),
        nginx_big_headers(70_000)
    );
    let Some(web) = nginx(&lb, &locations)? else {
        return Ok(());
    };
    let proxy = lb.proxy();
    let post = |path: &str| status(&["-x", &proxy, "-d", "x", &format!("http://web:9081{path}")]);
    assert_eq!(post("/big20"), 200);
    assert_eq!(post("/big70"), 502);
    let posts = web.requests();
    let huge: Vec<_> = posts
        .iter()
        .filter(|l| l.starts_with("POST /big70"))
        .collect();
    assert_eq!(huge.len(), 1, "{posts:?}");
    let log = std::fs::read_to_string(lb.dir.join("server-agent.log"))?;
    assert!(
        log.lines()
            .any(|l| l.contains(r#""path":"/big70""#) && l.contains(r#""response_flags":"UPE""#)),
        "the server's agent logs UPE"
    );
    Ok(())
}
