// The sign-in page: a refusal's message goes as soon as the key is typed again.
const key = document.getElementById("key");
key.addEventListener("input", () => document.querySelector(".error")?.remove(), { once: true });
