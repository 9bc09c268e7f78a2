"""End-to-end test harness: loopback upstream servers, a real mitmdump gateway, real clients."""
