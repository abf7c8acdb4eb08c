// The tickets page in a real headless Chromium: node tests/browser/tickets.mjs BASE_URL USER PASSWORD
//
// Logs in on /ui/tickets.html and prints `ready` once the live stream is open; then waits for the id of
// a ticket the caller opens through the API (read from standard input) to appear without a reload and
// prints `live ID`. Opens a ticket with the form (tenant t1, site a1) and prints `created ID`; tries an
// unknown site and prints `refused REASON`; cancels the created ticket with a comment and prints
// `cancelled ID`. Any failure exits non-zero with the reason on stderr. Run by tests/e2e/tickets.rs.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [base, user, password] = process.argv.slice(2);
if (!base || !user || !password) {
  console.error("usage: node tickets.mjs BASE_URL USER PASSWORD");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT = 15000;

const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve, reject) => {
  lines.once("line", resolve);
  lines.once("close", () => reject(new Error("stdin closed before the ticket id came")));
});

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
});
let status = 0;
let page;
try {
  page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(base + "/ui/tickets.html");
  await page.locator("#login input[name=username]").fill(user);
  await page.locator("#login input[name=password]").fill(password);
  await page.locator("#login button").click();
  await page.locator("#live[data-state=open]").waitFor();
  console.log("ready");

  const live = (await nextLine()).trim();
  await page.locator(`#tickets tbody tr[data-ticket-id="${live}"]`).waitFor();
  console.log(`live ${live}`);

  const form = page.locator("#create");
  await form.locator("input[name=tenant]").fill("t1");
  await form.locator("input[name=site]").fill("a1");
  await form.locator("select[name=category]").selectOption("water");
  await form.locator("select[name=priority]").selectOption("urgent");
  await form.locator("input[name=contact_phone]").fill("+7 900 555-00-22");
  await form.locator("input[name=description]").fill("Течёт стояк / riser leak");
  await form.locator("button").click();
  await page.locator("#create-error[data-created]").waitFor({ state: "attached" });
  const id = await page.locator("#create-error").getAttribute("data-created");
  const row = page.locator(`#tickets tbody tr[data-ticket-id="${id}"][data-status=new]`);
  await row.waitFor();
  console.log(`created ${id}`);

  await form.locator("input[name=site]").fill("nowhere");
  await form.locator("button").click();
  await page.locator("#create-error", { hasText: "nowhere" }).waitFor();
  console.log(`refused ${(await page.locator("#create-error").textContent()).trim()}`);

  await row.locator("select[name=status]").selectOption("cancelled");
  await row.locator("input[name=comment]").fill("дубль / duplicate");
  await row.locator("button.apply").click();
  await page.locator(`#tickets tbody tr[data-ticket-id="${id}"][data-status=cancelled]`).waitFor();
  console.log(`cancelled ${id}`);
} catch (e) {
  console.error(`browser test failed: ${e.message}`);
  const state = await page.evaluate(() => ({
    error: document.querySelector("#ticket-error")?.textContent,
    filter: new URLSearchParams(new FormData(document.querySelector("#filter"))).toString(),
    rows: [...document.querySelectorAll("#tickets tbody tr")].map((tr) => `${tr.dataset.ticketId}:${tr.dataset.status}`),
  })).catch((err) => ({ failed: String(err) }));
  console.log(`page ${JSON.stringify(state)}`);
  status = 1;
} finally {
  await browser.close();
  lines.close();
}
process.exit(status);
