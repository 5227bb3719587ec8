// Swagger UI on this API's document (/docs). A file, not an inline script: the page's policy allows no inline script.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  persistAuthorization: false, // a token stays in this tab's memory, never in storage
  displayRequestDuration: true,
});
