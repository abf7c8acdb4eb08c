// The dispatcher page in a real headless Chromium: node tests/browser/alarms.mjs BASE_URL USER PASSWORD
//
// Logs in on /ui/alarms.html, prints `ready` once the page's live stream is open, then waits for the
// alarm the caller raises (its key is read from standard input), acknowledges it with a comment and
// prints `acknowledged ID COMMENT`. Any failure exits non-zero with the reason on stderr. Run by
// tests/e2e/alarms.rs; Chromium is Debian's (`scripts/test` installs it).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [base, user, password] = process.argv.slice(2);
if (!base || !user || !password) {
  console.error("usage: node alarms.mjs BASE_URL USER PASSWORD");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const COMMENT = "бригада выехала / crew on the way";
const TIMEOUT = 15000;

const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve, reject) => {
  lines.once("line", resolve);
  lines.once("close", () => reject(new Error("stdin closed before the alarm key came")));
});

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
});
let status = 0;
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(base + "/ui/alarms.html");
  await page.locator("#login input[name=username]").fill(user);
  await page.locator("#login input[name=password]").fill(password);
  await page.locator("#login button").click();
  await page.locator("#live[data-state=open]").waitFor();
  console.log("ready");

  const key = (await nextLine()).trim();
  // No reload: the row must come over the live stream.
  const row = page.locator(`#alarms tbody tr[data-key="${key}"]`);
  await row.waitFor();
  const id = await row.getAttribute("data-alarm-id");
  const severity = await row.locator("td.sev").textContent();
  if (!/critical/i.test(severity)) throw new Error(`severity shown as ${severity}`);
  await row.locator("input[name=comment]").fill(COMMENT);
  await row.locator("button.acknowledge").click();
  await page.locator(`#alarms tbody tr[data-key="${key}"][data-state=acknowledged]`).waitFor();
  const ack = await page.locator(`#alarms tbody tr[data-key="${key}"] .ack`).textContent();
  if (!ack.includes(user) || !ack.includes(COMMENT)) throw new Error(`acknowledgement shown as ${ack}`);
  console.log(`acknowledged ${id} ${COMMENT}`);
} catch (e) {
  console.error(`browser test failed: ${e.message}`);
  status = 1;
} finally {
  await browser.close();
  lines.close();
}
process.exit(status);
