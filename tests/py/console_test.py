"""Drives tenantd's console in a real headless Chromium (the system's, through Playwright):
sign in with the admin token, watch a tenant created through the API appear, open it, see
its events, save a screenshot. Usage: console_test.py BASE_URL SLUG SCREENSHOT (the admin
token comes in TENANTD_TEST_ADMIN_TOKEN, so it is not on the command line)."""

import json
import os
import sys
import urllib.request

from playwright.sync_api import expect, sync_playwright

base, slug, screenshot = sys.argv[1:4]
token = os.environ["TENANTD_TEST_ADMIN_TOKEN"]
chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/ui")

    # A wrong token is refused and leaves nothing stored.
    page.fill("#token", "not-the-token")
    page.press("#token", "Enter")
    expect(page.locator("#sign-in-error")).to_contain_text("sign in again")
    assert page.evaluate("sessionStorage.getItem('tenantd.token')") is None

    # Enter signs in; the token lives in sessionStorage, never in the URL.
    page.fill("#token", token)
    page.press("#token", "Enter")
    expect(page.locator("#servers tbody tr").first).to_be_visible(timeout=15000)
    assert token not in page.url, page.url
    assert page.evaluate("sessionStorage.getItem('tenantd.token')") == token

    # A tenant created through the API appears by itself (the console refreshes).
    request = urllib.request.Request(
        f"{base}/v1/tenants",
        data=json.dumps({"slug": slug, "labels": {"note": "<img src=x onerror=alert(1)>"}}).encode(),
        headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 201, response.status
    row = page.locator(f"#tenants tr[data-slug='{slug}']")
    expect(row).to_be_visible(timeout=30000)
    expect(row).to_contain_text("READY", timeout=30000)

    # Open it: its page shows the status and the events, newest first.
    row.click()
    expect(page.locator("#tenant-title")).to_have_text(f"Tenant {slug}")
    expect(page.locator("#events li[data-kind='ready']")).to_be_visible(timeout=15000)
    expect(page.locator("#events li[data-kind='step.placed']")).to_be_visible()
    # Labels are shown as text, never run as HTML.
    expect(page.locator("#tenant")).to_contain_text("<img src=x onerror=alert(1)>")
    assert page.locator("#tenant img").count() == 0

    page.screenshot(path=screenshot, full_page=True)
    assert not errors, errors
    browser.close()
print("console ok")
